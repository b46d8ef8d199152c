"""Activation patching baselines: batched edge patching equals one edge per forward; node
patching equals editing the weights so the node's output is the ablated one."""
import pytest
import torch

from harness.core.engine import Engine
from harness.methods import get_method
from harness.core import objectives
from harness.core.references import source_cache

TASKS = ("tracr-xproportion", "tracr-reverse")


@pytest.fixture(scope="module")
def setups(tracr_tasks):
    return {n: (t, Engine(t.load_model())) for n, t in tracr_tasks.items()}


@pytest.mark.parametrize("task,ablation", [("tracr-xproportion", "resample"), ("tracr-reverse", "zero")])
def test_batched_edge_patching_equals_single(setups, task, ablation):
    t, e = setups[task]
    data = t.data(ablation=ablation)
    m = get_method("act-patch-edge")
    single = m.run(e, data, "single")
    assert torch.isfinite(single).all() and single.abs().max() > 1e-3
    for chunk in (None, 7):
        torch.testing.assert_close(m.run(e, data, "batched", chunk=chunk), single, rtol=1e-5, atol=1e-6)


def test_edge_subset_leaves_others_nan(setups):
    t, e = setups["tracr-reverse"]
    data = t.data()
    m = get_method("act-patch-edge")
    sub = m.run(e, data, "single", edges=[0, 5, e.graph.n_edges - 1])
    full = m.run(e, data, "batched")
    done = torch.zeros(e.graph.n_edges, dtype=torch.bool)
    done[[0, 5, e.graph.n_edges - 1]] = True
    assert torch.isnan(sub[~done]).all()
    torch.testing.assert_close(sub[done], full[done], rtol=1e-5, atol=1e-6)


def test_logit_diff_objective(setups):
    """Patching with the logit-diff objective scores the change of the answer logit difference."""
    t, e = setups["tracr-reverse"]
    data = t.data()
    s = get_method("act-patch-edge").run(e, data, "logit-diff")
    i = e.graph.edge_ids["blocks.3.attn.hook_result[:, :, 0] -> blocks.3.hook_resid_post[:]"]
    cache = source_cache(e, data)  # the run the method patches from (positions scrambled, as ACDC)
    mask = torch.zeros(e.graph.n_edges)
    mask[i] = 1
    clean = e.logits(data.clean)
    ld = lambda lg: objectives.evaluate("logit-diff", lg, clean, data).mean()  # noqa: E731
    want = ld(e.logits(data.clean, mask, cache)) - ld(clean)
    torch.testing.assert_close(s[i], want)
    assert want < -0.1  # patching the output head hurts the answer


def _zeroed(w, keys):
    p = dict(w.params)
    for k, idx in keys:
        p[k] = p[k].clone()
        if idx is None:
            p[k].zero_()
        else:
            p[k][idx] = 0
    return type(w)(w.cfg, p)


@pytest.mark.parametrize("task", TASKS)
def test_node_patching_equals_weight_ablation(setups, task):
    """Under zero ablation, patching a sender node is the model with that node's output weights
    zeroed (heads: W_O[h]; MLPs: W_out and b_out; the token embedding: W_E)."""
    t, e = setups[task]
    data = t.data(ablation="zero")
    g, cfg = e.graph, e.cfg
    s = get_method("act-patch-node").run(e, data, "metric")
    clean = e.logits(data.clean)

    def effect(keys):
        lg = Engine(_zeroed(e.w, keys), g).logits(data.clean)
        return data.metric_values(lg, clean).mean() - data.metric_values(clean, clean).mean()

    cases = [(0, [("embed.W_E", None)])]
    for L in range(cfg.n_layers):
        cases.append((int(g.head_sender[L, 0]), [(f"blocks.{L}.attn.W_O", 0)]))
        cases.append((int(g.mlp_sender[L]), [(f"blocks.{L}.mlp.W_out", None), (f"blocks.{L}.mlp.b_out", None)]))
    for sender, keys in cases:
        edges = torch.nonzero(g.add_sender == sender).flatten()
        want = effect(keys)
        torch.testing.assert_close(s[edges], want.expand(len(edges)), rtol=1e-5, atol=1e-6)
    assert s.abs().max() > 1e-2


def test_node_patching_direct_edges_equal_edge_patching(setups):
    """A q/k/v node's only edge is its DIRECT edge: both methods must agree there; and a sender
    with one outgoing edge (the last MLP -> output) scores as that edge."""
    t, e = setups["tracr-reverse"]
    data = t.data()
    node = get_method("act-patch-node").run(e, data, "metric")
    edge = get_method("act-patch-edge").run(e, data, "batched")
    g = e.graph
    torch.testing.assert_close(node[g.n_add :], edge[g.n_add :], rtol=1e-5, atol=1e-6)
    last_mlp = torch.nonzero(g.add_sender == int(g.mlp_sender[-1])).flatten()
    assert len(last_mlp) == 1
    torch.testing.assert_close(node[last_mlp], edge[last_mlp], rtol=1e-5, atol=1e-6)


def test_per_example_terms_sum_to_the_scores():
    """Bootstrap reweights examples: patching scores must decompose exactly over examples."""
    from harness.methods import get_method
    from harness.core.engine import Engine
    from harness.tasks import get_task

    t = get_task("tracr-xproportion")
    e, d = Engine(t.load_model(dtype=torch.float64)), t.data()
    for name, variant in [("act-patch-edge", "batched"), ("act-patch-edge", "single"), ("act-patch-node", "metric")]:
        spec = get_method(name)
        full = spec.run(e, d, variant)
        per = spec.run(e, d, variant, per_example=True)
        assert per.shape == (d.n, e.graph.n_edges)
        torch.testing.assert_close(per.sum(0), full, rtol=1e-9, atol=1e-12)
