"""Subnetwork probing (`sp`): the hard-concrete gates against Louizos et al. 2018's formulas, a case
with a known answer, ACDC's mask -> circuit rule against its stored ROC points, determinism for a
seed, and a run through the CLI that writes the family's pessimistic AUCs to results.csv."""
import math

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.core.engine import Engine
from harness.core.references import reference_logits, source_cache
from harness.core.weights import ModelConfig, random_weights
from harness.eval.scoring import score_edges_and_nodes, score_family
from harness.methods import CircuitFamily, get_method
from harness.methods.patching import node_patches
from harness.methods.subnetwork_probing import (
    ACDC_LAMBDAS, Nodes, deterministic_gate, hard_concrete_sample, init_log_alpha, lambdas_for, open_probability,
    train_gates,
)

T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731

# xproportion under zero ablation: the layer-0 head and the layer-1 MLP do not touch the output
IRRELEVANT = {"blocks.0.attn.hook_q[:, :, 0]", "blocks.0.attn.hook_k[:, :, 0]", "blocks.0.attn.hook_v[:, :, 0]",
              "blocks.1.hook_mlp_out[:]"}
FAST = dict(epochs=60, lr=0.1)  # gates travel as far as in 6,000 ACDC epochs at lr 1e-3
QUICK = dict(epochs=30, lr=0.1)


@pytest.fixture(scope="module")
def xprop(tracr_tasks):
    t = tracr_tasks["tracr-xproportion"]
    return t, Engine(t.load_model(dtype=torch.float64)), t.data(ablation="zero").subset(torch.arange(16))


# ----- (1) hard concrete --------------------------------------------------------------------------------
def test_hard_concrete_matches_hand_computed_values():
    # init: logit((0.9 + 0.1) / 1.2) = log 5, which the deterministic gate maps back to 0.9
    assert init_log_alpha() == pytest.approx(math.log(5), abs=1e-12)
    assert float(deterministic_gate(T(math.log(5)))) == pytest.approx(0.9, abs=1e-12)
    # z = clamp(1.2 sigmoid((log u - log(1 - u) + log_alpha) / (2/3)) - 0.1, 0, 1)
    assert float(hard_concrete_sample(T(0.0), T(0.5))) == pytest.approx(0.5, abs=1e-12)
    assert float(hard_concrete_sample(T(0.0), T(0.25))) == pytest.approx(1.2 / (1 + 3 ** 1.5) - 0.1, abs=1e-12)
    assert float(hard_concrete_sample(T(0.0), T(0.25))) == pytest.approx(0.0936686, abs=1e-6)
    assert float(hard_concrete_sample(T(-1.0), T(0.6))) == pytest.approx(0.2488856, abs=1e-6)
    assert float(hard_concrete_sample(T(math.log(5)), T(0.5))) == 1.0  # 1.0015 stretched, clamped
    assert float(hard_concrete_sample(T(-math.log(5)), T(0.5))) == 0.0  # -0.0015 stretched, clamped
    # u is clamped to [1e-4, 1 - 1e-4]
    assert torch.equal(hard_concrete_sample(T(3.0), T(0.0)), hard_concrete_sample(T(3.0), T(1e-4)))
    assert torch.equal(hard_concrete_sample(T(-3.0), T(1.0)), hard_concrete_sample(T(-3.0), T(1 - 1e-4)))
    clamped = 1.2 / (1 + math.exp(-1.5 * (math.log(1e-4 / 0.9999) + 9))) - 0.1  # u = 0 read as 1e-4
    assert float(hard_concrete_sample(T(9.0), T(0.0))) == pytest.approx(clamped, abs=1e-12)
    assert clamped == pytest.approx(0.406, abs=1e-3)
    # deterministic (test-time) gate: clamp(1.2 sigmoid(log_alpha) - 0.1, 0, 1)
    assert float(deterministic_gate(T(0.0))) == pytest.approx(0.5, abs=1e-12)
    assert float(deterministic_gate(T(-math.log(5)))) == pytest.approx(0.1, abs=1e-12)
    assert float(deterministic_gate(T(-10.0))) == 0.0 and float(deterministic_gate(T(10.0))) == 1.0
    # P(z != 0) = sigmoid(log_alpha - (2/3) log(0.1 / 1.1))
    assert float(open_probability(T(0.0))) == pytest.approx(1 / (1 + 11 ** (-2 / 3)), abs=1e-12)
    assert float(open_probability(T(0.0))) == pytest.approx(0.8318222, abs=1e-6)
    # the gradient in the open interval: dz/dlog_alpha = 1.2 s (1 - s) / (2/3)
    la = T(-1.0).requires_grad_(True)
    hard_concrete_sample(la, T(0.6)).backward()
    s = 1 / (1 + math.exp(-1.5 * (math.log(1.5) - 1)))
    assert float(la.grad) == pytest.approx(1.2 * s * (1 - s) * 1.5, abs=1e-12)


def test_the_penalty_is_the_probability_that_a_sampled_gate_is_open():
    """Louizos et al. eq. 12: P(z > 0) of the sampler equals the penalty's term (200,000 draws)."""
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for la in (-2.0, 0.0, 1.5):
        share = float((hard_concrete_sample(T(la), u) > 0).double().mean())
        assert share == pytest.approx(float(open_probability(T(la))), abs=0.005), la


# ----- nodes, penalty weights and ACDC's mask -> circuit rule ----------------------------------------------
def test_gates_act_through_act_patch_node_patches_and_the_penalty_weighs_hooks_equally():
    cfg = ModelConfig("two-heads", n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=7, n_ctx=5, d_mlp=8)
    g = Engine(random_weights(cfg)).graph
    nodes = Nodes(g)
    assert len(nodes) == 2 * (3 * 2 + 1)
    rows = node_patches(g).bool()  # act-patch-node's: one per sender, then one per DIRECT edge
    senders = [snd.name for snd in g.senders]
    for i, name in enumerate(nodes.names):
        if name in senders:  # an MLP: every edge out of it
            assert "mlp_out" in name and torch.equal(nodes.patch[i], rows[senders.index(name)])
        else:  # a head's q, k or v: its DIRECT edge
            d = next(j for j, (_, r) in enumerate(g.edge_endpoints) if r == name)
            assert d >= g.n_add and torch.equal(nodes.patch[i], rows[len(senders) + d - g.n_add])
    # 8 hooks (per layer q, k, v, MLP): a head's gate weighs 1/16, an MLP's 1/8
    assert nodes.weight.sum() == pytest.approx(1.0)
    assert sorted(set(nodes.weight.tolist())) == [1 / 16, 1 / 8]
    assert all((w == 1 / 8) == ("mlp" in n) for n, w in zip(nodes.names, nodes.weight.tolist()))


def test_masked_nodes_give_acdcs_stored_roc_points(tracr_tasks):
    """ACDC's SP points (plots_data/sp-tracr-*-0.json, commit 7725612c) from the masks that produce
    them: tracr-reverse under resample, every node but layer 3's v masked: 6 edges, edge FPR 3/91,
    TPR 3/15, node FPR 0, TPR 6/16; tracr-xproportion under zero, layer 0's head and MLP 1 masked:
    18 edges, edge FPR 8/28, TPR 10/10, node TPR 11/11."""
    cases = [("tracr-reverse", lambda n: n == "blocks.3.attn.hook_v[:, :, 0]", 6, (3 / 91, 3 / 15, 0.0, 6 / 16)),
             ("tracr-xproportion", lambda n: n not in IRRELEVANT, 18, (8 / 28, 1.0, 0.0, 1.0))]
    for name, keep, n_edges, point in cases:
        t = tracr_tasks[name]
        g = Engine(t.load_model()).graph
        nodes = Nodes(g)
        c = nodes.circuits(torch.tensor([[keep(n) for n in nodes.names]]))
        gt = t.ground_truths()["acdc"].edge_mask(g)
        assert int(c.sum()) == n_edges, name
        gtn, cn = g.nodes_touched(gt), g.nodes_touched(c[0])
        got = (float((c[0] & ~gt).sum() / (~gt).sum()), float((c[0] & gt).sum() / gt.sum()),
               float((cn & ~gtn).sum() / (~gtn).sum()), float((cn & gtn).sum() / gtn.sum()))
        assert got == pytest.approx(point), name
    # nothing masked: every edge; everything masked: only the inputs' edges into the output
    g = Engine(tracr_tasks["tracr-reverse"].load_model()).graph
    nodes = Nodes(g)
    assert nodes.circuits(torch.ones(1, len(nodes), dtype=torch.bool)).all()
    none = nodes.circuits(torch.zeros(1, len(nodes), dtype=torch.bool))[0]
    assert [g.edge_names[i] for i in none.nonzero().flatten()] == [
        "hook_embed[:] -> blocks.3.hook_resid_post[:]", "hook_pos_embed[:] -> blocks.3.hook_resid_post[:]"]


# ----- (2) a known answer ---------------------------------------------------------------------------------------
def test_a_large_penalty_drops_exactly_the_irrelevant_nodes_and_none_keeps_everything(xprop):
    t, e, data = xprop
    nodes = Nodes(e.graph)
    # the known answer: patching any one of IRRELEVANT leaves the output as it is, any other changes it
    source, (clean, _) = source_cache(e, data), reference_logits(e, data)
    cols, scored = data.scored()
    for i, name in enumerate(nodes.names):
        m = float(scored.metric_values(e.run(data.clean, nodes.patch[i].to(e.w.dtype), source, positions=cols).logits, clean).mean())
        assert (m == 0.0) == (name in IRRELEVANT), (name, m)
    log_alpha, gates, _ = train_gates(e, data, [0.0, 0.1], seed=0, final_gate="deterministic", **FAST)
    # no penalty: every gate stays open; the irrelevant ones get no gradient at all and stay at their start
    assert (gates[0] >= 0.5).all()
    irrelevant = torch.tensor([n in IRRELEVANT for n in nodes.names])
    assert torch.equal(log_alpha[0, irrelevant], torch.full((4,), init_log_alpha(), dtype=log_alpha.dtype))
    # lambda 0.1: exactly the irrelevant nodes are masked, so the circuit holds the ground truth
    assert {n for n, z in zip(nodes.names, gates[1].tolist()) if z < 0.5} == IRRELEVANT
    fam = get_method("sp").run(e, data, "acdc", lambdas=[0.0, 0.1], final_gate="deterministic", **FAST)
    gt = t.ground_truths()["acdc"].edge_mask(e.graph)
    assert fam.circuits[0].all() and bool((fam.circuits[1] | ~gt).all())
    assert torch.equal(fam.circuits[1], nodes.circuits(~irrelevant[None])[0]) and int(fam.circuits[1].sum()) == 18


# ----- (3) determinism --------------------------------------------------------------------------------------------
def test_the_same_seed_gives_the_same_circuits_and_a_lambda_does_not_depend_on_its_neighbours(xprop):
    _, e, data = xprop
    spec = get_method("sp")
    assert spec.seeded and spec.output == "family" and set(spec.references_for("short")) == {"resample", "zero"}
    a = train_gates(e, data, [0.01, 0.1], seed=3, **QUICK)
    b = train_gates(e, data, [0.01, 0.1], seed=3, **QUICK)
    c = train_gates(e, data, [0.01, 0.1], seed=4, **QUICK)
    for x, y in zip(a, b):
        assert torch.equal(x, y)  # bit for bit on CPU
    assert not torch.equal(a[0], c[0])  # another seed draws other gates
    fa = spec.run(e, data, "short", seed=3, lambdas=[0.01, 0.1], epochs=QUICK["epochs"])
    fb = spec.run(e, data, "short", seed=3, lambdas=[0.01, 0.1], epochs=QUICK["epochs"])
    assert torch.equal(fa.circuits, fb.circuits) and fa.thresholds == [0.01, 0.1]
    # lambda 0.1 alone trains as it did beside 0.01 (its own parameters and its own draws)
    alone = train_gates(e, data, [0.1], seed=3, **QUICK)
    assert torch.allclose(alone[0][0], a[0][1], atol=1e-6) and torch.equal(alone[1][0] >= 0.5, a[1][1] >= 0.5)


def test_rows_per_forward_are_bounded_by_memory_and_do_not_change_a_circuit(xprop):
    from harness.bench.counting import CountingEngine
    from harness.core.architectures import ARCHITECTURES
    from harness.methods.subnetwork_probing import MAX_ROWS, rows_per_forward

    assert rows_per_forward(ARCHITECTURES["gpt2"], torch.float32) == 1  # one lambda per forward on GPT-2
    _, e, data = xprop
    assert rows_per_forward(e.cfg, e.w.dtype) == MAX_ROWS
    lams = [0.01, 0.1, 0.5]
    counting = CountingEngine(e.w, e.graph)
    together = train_gates(counting, data, lams, seed=3, **QUICK)
    assert counting.forwards == QUICK["epochs"]  # every lambda in one forward per step
    counting.arm()
    one_by_one = train_gates(counting, data, lams, seed=3, max_rows=data.n, **QUICK)  # one lambda per forward
    assert counting.forwards == QUICK["epochs"] * len(lams) and counting.rows == counting.forwards * data.n
    assert torch.allclose(together[0], one_by_one[0], atol=1e-6)
    assert torch.equal(together[1] >= 0.5, one_by_one[1] >= 0.5)


def test_lambda_lists_are_acdcs():
    assert ACDC_LAMBDAS["l2"] == (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.063, 0.126, 0.251, 0.501, 1.0)
    assert len(ACDC_LAMBDAS["kl"]) == 32 and ACDC_LAMBDAS["kl"][:3] == (0.01, 0.016, 0.025) and ACDC_LAMBDAS["kl"][-1] == 250
    data = type("D", (), {"metric": type("M", (), {"name": "l2"})()})()
    assert lambdas_for(data, n_lambdas=4) == [0.001, 0.008, 0.126, 1.0]  # items 0, 3, 7, 10
    assert lambdas_for(data, [0.5, 0.2]) == [0.5, 0.2]


def test_every_variant_and_reference_gives_a_scoreable_family(tracr_tasks):
    """What tests/test_methods_all.py checks of every method, with a short sweep."""
    spec = get_method("sp")
    for name, t in tracr_tasks.items():
        e = Engine(t.load_model())
        gt = t.ground_truths()["acdc"].edge_mask(e.graph)
        for v in spec.variants:
            for ref in spec.references_for(v):
                out = spec.run(e, t.data(ablation=ref).subset(torch.arange(4)), v, lambdas=[1e-3, 1.0], epochs=3)
                assert isinstance(out, CircuitFamily) and out.circuits.dtype == torch.bool
                assert out.circuits.shape == (2, e.graph.n_edges), (name, v, ref)
                score_edges_and_nodes(e.graph, out.circuits, gt)


# ----- (4) through the CLI --------------------------------------------------------------------------------------------
def test_a_run_writes_the_familys_pessimistic_aucs(tmp_path, tracr_tasks):
    out = tmp_path / "run"
    assert main(["-q", "run", "--tasks", "tracr-xproportion", "--methods", "sp", "--out", str(out), "--bootstrap", "0",
                 "--no-progress"]) == 0
    df = pd.read_csv(out / "results.csv")
    sp = df[(df["method"] == "sp") & (df["control"] == "trained")]
    assert set(sp["variant"]) == {"short"} and set(sp["ablation"]) == {"resample", "zero"}
    assert set(zip(sp["ground_truth"], sp["level"])) == {(g, lv) for g in ("acdc", "structural") for lv in ("edge", "node")}
    assert sp["pessimistic_auc"].between(0, 1).all() and (sp["status"] == "ok").all()
    assert (df["method"] == "sp").sum() == len(sp)  # a family gets no reset control by default
    # the numbers are those of the family the method gives for the run's seed
    t = tracr_tasks["tracr-xproportion"]
    e = Engine(t.load_model(dtype=t.default_dtype))
    g = e.graph
    fam = get_method("sp").run(e, t.data(ablation="zero"), "short", seed=0)
    gt = t.ground_truths()["acdc"].edge_mask(g)
    row = sp[(sp["ablation"] == "zero") & (sp["ground_truth"] == "acdc")].set_index("level")
    assert row.loc["edge", "pessimistic_auc"] == pytest.approx(score_family(fam.circuits, gt).pessimistic_auc)
    nodes = torch.stack([g.nodes_touched(c) for c in fam.circuits])
    assert row.loc["node", "pessimistic_auc"] == pytest.approx(score_family(nodes, g.nodes_touched(gt)).pessimistic_auc)
