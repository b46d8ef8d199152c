"""HISP (harness/methods/hisp.py): its node scores against finite differences of a component mask
through the engine's patch (an independent path: no receiver gradients), the structure of its
family of circuits against a rebuild from node names, ACDC's tracr numbers, and a CLI run."""
import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.core import objectives
from harness.core.data import Metric, TaskData
from harness.core.engine import Engine
from harness.core.graph import node_place
from harness.core.weights import ModelConfig, random_weights
from test_eap import random_prompts
from harness.eval.bootstrap import score_all
from harness.methods import get_method
from harness.methods import hisp as H
from harness.tasks import get_task

CFG = ModelConfig("tiny-hisp", 2, 3, 8, 4, 11, 6, d_mlp=12, act_fn="gelu_new", normalization_type="LN")
ATTN_ONLY = ModelConfig("tiny-hisp-attn", 3, 2, 8, 4, 11, 6, normalization_type="LN")  # d_mlp None: attention only


def tiny(ablation="resample", seed=0, cfg=CFG):
    e = Engine(random_weights(cfg, seed=seed, dtype=torch.float64, init_range=0.15))
    data = random_prompts(cfg, 4, 5, seed, ablation)
    return e, data


def component_patch(graph, c: int, eps: float) -> torch.Tensor:
    """[n_edges]: component c moved eps towards its source value: a q/k/v is its DIRECT edge, an
    MLP output every ADDITION edge it sends (its value in every receiver that reads it)."""
    cfg, p = graph.cfg, torch.zeros(graph.n_edges, dtype=torch.float64)
    layer, slot = divmod(c, H.per_layer(cfg))
    if slot < 3 * cfg.n_heads:
        letter, head = divmod(slot, cfg.n_heads)
        p[graph.direct_index(layer, "qkv"[letter], head)] = eps
    else:
        p[: graph.n_add][graph.add_sender == graph.mlp_sender[layer]] = eps
    return p


def finite_difference_terms(e, data, objective, eps=1e-5):
    """[batch, n_components]: dF_i/dm_C at m = 1, m the mask of C(x) m + C(x') (1 - m), by
    central differences of each example's objective through Engine.run's patch (patch = 1 - m)."""
    source = e.cache(data.clean, zero=True) if data.ablation == "zero" else e.cache(data.corrupted)
    clean_logits = e.logits(data.clean)
    cols = []
    for c in range(H.n_components(e.cfg)):
        f = [objectives.evaluate(objective, e.run(data.clean, component_patch(e.graph, c, s), source).logits,
                                 clean_logits, data) for s in (eps, -eps)]
        cols.append(-(f[0] - f[1]) / (2 * eps))  # d/dm = -d/dpatch
    return torch.stack(cols, 1)


# ----- (1) node scores: an independent reference ----------------------------------------------------
@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_component_terms_equal_finite_differences_of_a_mask(ablation):
    e, data = tiny(ablation)
    fd = finite_difference_terms(e, data, "logit-diff")
    terms = H.component_terms(e, data, "logit-diff")
    assert fd.abs().min(0).values.max() > 1e-3  # not a vacuous comparison: some component matters in every example
    torch.testing.assert_close(terms, fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(H.importance(e, data, "logit-diff"), fd.abs().mean(0), rtol=1e-6, atol=1e-9)
    # chunks of examples combine exactly (mean over examples of |term|)
    torch.testing.assert_close(H.importance(e, data, "logit-diff", chunk=3), fd.abs().mean(0), rtol=1e-6, atol=1e-9)


def test_attention_only_terms_equal_finite_differences():
    e, data = tiny("resample", seed=1, cfg=ATTN_ONLY)
    torch.testing.assert_close(H.component_terms(e, data, "logit-diff"), finite_difference_terms(e, data, "logit-diff"),
                               rtol=1e-6, atol=1e-9)


def test_a_metric_against_clean_outputs_has_zero_gradient_and_ties_everything():
    """KL vs the clean outputs is flat at the clean point: every I_C is 0 up to round-off (the
    finite differences are second order), the measured tie floor makes them 0, and the family is
    ACDC's tie order alone."""
    e, data = tiny("resample")
    assert finite_difference_terms(e, data, "metric").abs().max() < 1e-8
    assert H.importance(e, data, "metric").abs().max() < 1e-15
    scores, floor = H.measured_importance(e, data, "metric")
    assert floor > 0 and scores.abs().max() == 0
    tie_order = H.family(e.graph, torch.zeros(H.n_components(e.cfg)))
    assert torch.equal(get_method("hisp").run(e, data, "metric").circuits, tie_order.circuits)


def test_per_layer_normalisation_and_tie_order():
    s = torch.tensor([3.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2e-9, 0.0, 0.0, 0.0],
                     dtype=torch.float64)
    n = H.normalise_per_layer(s, CFG)  # CFG: 2 layers of 3 x 3 + 1 = 10 components
    assert n[:10].norm().item() == pytest.approx(1.0) and n[0].item() == pytest.approx(0.6)
    torch.testing.assert_close(n[10:], s[10:] / 1e-6)  # a layer's norm under 1e-6 is clamped, as ACDC's
    # least important first, ties in ACDC's list order (layer by layer: q heads, k heads, v heads, MLP)
    assert H.pruning_order(torch.zeros(20)).tolist() == list(range(20))
    assert H.pruning_order(torch.tensor([1.0, 0.0, 1.0, 0.0])).tolist() == [1, 3, 0, 2]
    names = H.component_names(Engine(random_weights(CFG, seed=0)).graph)
    assert names[:4] == [f"blocks.0.attn.hook_q[:, :, {h}]" for h in range(3)] + ["blocks.0.attn.hook_k[:, :, 0]"]
    assert names[9] == "blocks.0.hook_mlp_out[:]" and names[10] == "blocks.1.attn.hook_q[:, :, 0]"


# ----- (2) the family's structure ----------------------------------------------------------------------
def expected_circuit(graph, pruned: set) -> torch.Tensor:
    """The edges between kept nodes, rebuilt from node names (ACDC's mask rule): a q/k/v node and
    its input go with the component, a head's output with all three of its q, k, v, an MLP's
    input and output with it; input nodes and the output stay."""
    def kept(name):
        layer, head, role = node_place(name)
        if role in ("q", "k", "v", "q_input", "k_input", "v_input"):
            return graph.qkv_node(layer, role[0], head) not in pruned
        if role == "result":
            return any(graph.qkv_node(layer, x, head) not in pruned for x in "qkv")
        if role in ("mlp_in", "mlp_out"):
            return f"blocks.{layer}.hook_mlp_out[:]" not in pruned
        return True

    return torch.tensor([kept(s) and kept(r) for s, r in graph.edge_endpoints])


@pytest.mark.parametrize("cfg", [CFG, ATTN_ONLY], ids=["mlp", "attn-only"])
def test_family_is_nested_circuits_between_kept_nodes(cfg):
    g = Engine(random_weights(cfg, seed=0)).graph
    N, names = H.n_components(cfg), H.component_names(g)
    scores = torch.randint(0, 4, (N,), generator=torch.Generator().manual_seed(0)).double()  # many ties
    fam = H.family(g, scores)
    assert fam.circuits.shape == (N + 1, g.n_edges) and fam.circuits.dtype == torch.bool
    assert fam.thresholds == [float(N - j) for j in range(N + 1)]
    assert fam.circuits[0].all()  # the largest k: the full graph
    inputs = {s.name for s in g.senders if s.kind == "input"}
    last = {g.edge_endpoints[i] for i in torch.nonzero(fam.circuits[-1]).flatten().tolist()}
    assert last == {(s, g.receivers[g.output_receiver].name) for s in inputs}  # k = 0: input -> output only
    assert not (fam.circuits[1:] & ~fam.circuits[:-1]).any()  # nested
    order = H.pruning_order(scores).tolist()
    for j in range(N + 1):
        assert torch.equal(fam.circuits[j], expected_circuit(g, {names[c] for c in order[:j]})), j
    # a head's output edges leave only with the last of its q, k, v; DIRECT edges with their own
    to_output = int(g.dense_index[g.output_receiver, g.head_sender[0, 0]])  # head 0.0 -> output (never pruned)
    steps = [order.index(H.qkv_component(cfg, 0, x, 0)) + 1 for x in range(3)]
    assert fam.circuits[: max(steps), to_output].all() and not fam.circuits[max(steps) :, to_output].any()
    for x, step in enumerate(steps):
        d = g.direct_index(0, "qkv"[x], 0)
        assert fam.circuits[step - 1, d] and not fam.circuits[step, d]


def test_method_runs_under_both_references_and_in_chunks():
    spec = get_method("hisp")
    assert spec.gradient and spec.output == "family" and set(spec.references_for("metric")) == {"resample", "zero"}
    assert spec.timings is not None and spec.description
    for ablation in ("resample", "zero"):
        e, data = tiny(ablation)
        whole = spec.run(e, data, "logit-diff")
        assert torch.equal(spec.run(e, data, "logit-diff", chunk=3).circuits, whole.circuits)
        expected = H.family(e.graph, H.normalise_per_layer(H.importance(e, data, "logit-diff"), e.cfg))
        assert torch.equal(whole.circuits, expected.circuits)  # no score of this model is within round-off of 0


# ----- (3) ACDC's tracr numbers, precision, and the CLI ---------------------------------------------------------
PAPER = {"tracr-reverse": (0.577, 0.750), "tracr-xproportion-acdc": (0.679, 0.909)}  # HISP (E), (N), Tables 2-3


@pytest.mark.parametrize("task_name", list(PAPER))
def test_metric_variant_gives_acdcs_tracr_hisp_aucs(task_name):
    task = get_task(task_name)
    e, base = Engine(task.load_model()), task.data()
    for ablation in ("resample", "zero"):
        data = base.with_ablation(ablation)
        assert H.importance(e, data, "metric").abs().max() == 0  # L2 vs clean outputs: flat at the clean point
        fam = get_method("hisp").run(e, data, "metric")
        got = score_all(task, e.graph, fam.circuits)
        assert (got[("acdc", "edge")].pessimistic_auc, got[("acdc", "node")].pessimistic_auc) == \
            pytest.approx(PAPER[task_name], abs=5e-4), ablation


def test_float32_and_float64_prune_in_the_same_order():
    """tracr-reverse, zero reference, logit-diff: some I_C are round-off (1e-35..1e-5 in float64);
    the measured tie floor sets them to 0, so both precisions give the same circuits."""
    task = get_task("tracr-reverse")
    data = task.data().with_ablation("zero")
    e64 = Engine(task.load_model("cpu", torch.float64))
    raw = H.importance(e64, data, "logit-diff")
    assert ((raw > 0) & (raw < 1e-4)).any()  # there is round-off to guard against
    fams = [get_method("hisp").run(Engine(task.load_model("cpu", dt)), data, "logit-diff")
            for dt in (torch.float32, torch.float64)]
    assert torch.equal(fams[0].circuits, fams[1].circuits)
    assert not torch.equal(fams[1].circuits, get_method("hisp").run(e64, data, "logit-diff", measure_floor=False).circuits)


def test_cli_run_writes_pessimistic_aucs(tmp_path):
    assert main(["run", "--tasks", "tracr-reverse", "--methods", "hisp", "--out", str(tmp_path),
                 "--bootstrap", "0", "--no-progress"]) == 0
    csv = pd.read_csv(tmp_path / "results.csv")
    rows = csv[csv["method"] == "hisp"]
    assert set(rows["variant"]) == {"metric", "logit-diff"} and set(rows["ablation"]) == {"resample", "zero"}
    n_gts = len(get_task("tracr-reverse").ground_truths())  # acdc and the structural variants
    assert len(rows) == 2 * 2 * n_gts * 2 and rows["pessimistic_auc"].notna().all()  # variants x refs x GTs x levels
    acdc = rows[(rows["variant"] == "metric") & (rows["ground_truth"] == "acdc")].set_index(["ablation", "level"])
    for ablation in ("resample", "zero"):
        assert acdc.loc[(ablation, "edge"), "pessimistic_auc"] == pytest.approx(0.577, abs=5e-4)
        assert acdc.loc[(ablation, "node"), "pessimistic_auc"] == pytest.approx(0.750, abs=5e-4)
