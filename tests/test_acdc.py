"""ACDC: recovers tracr-reverse's zero-ablation ground truth (ACDC paper Table 3: AUC 1.0), and
its bookkeeping (threshold batching, extremes, the kept circuit's metric) is right."""
import pytest
import torch

from harness.core.engine import Engine
from harness.methods import CircuitFamily, get_method
from harness.methods.acdc import acdc_sweep
from harness.eval.scoring import score_edges_and_nodes


@pytest.fixture(scope="module")
def reverse(tracr_tasks):
    t = tracr_tasks["tracr-reverse"]
    return t, Engine(t.load_model()), t.data(ablation="zero")


def test_acdc_recovers_tracr_reverse_ground_truth(reverse):
    t, e, data = reverse
    fam = get_method("acdc").run(e, data, "sweep")
    assert isinstance(fam, CircuitFamily)
    assert fam.circuits.dtype == torch.bool and fam.circuits.shape == (21, e.graph.n_edges)
    gt = t.ground_truths()["acdc"].edge_mask(e.graph)
    res = score_edges_and_nodes(e.graph, fam.circuits, gt)
    for level in ("edge", "node"):
        assert res[level].pessimistic_auc > 0.99, (level, res[level].as_dict())
        assert res[level].auc > 0.99
    # The smallest threshold's circuit is exactly the ground truth.
    assert torch.equal(fam.circuits[0], gt)


def test_threshold_batching_equals_separate_runs(tracr_tasks):
    t = tracr_tasks["tracr-xproportion"]
    e, data = Engine(t.load_model()), t.data()
    taus = [1e-5, 1e-3, 3e-2]
    together, _ = acdc_sweep(e, data, taus)
    for i, tau in enumerate(taus):
        alone, _ = acdc_sweep(e, data, [tau])
        assert torch.equal(alone[0], together[i])
    # Batched thresholds through the method's max_rows grouping give the same result.
    grouped = get_method("acdc").run(e, data, "sweep", thresholds=taus, max_rows=data.n).circuits
    assert torch.equal(grouped, together)


def test_extreme_thresholds(reverse):
    _, e, data = reverse
    kept, _ = acdc_sweep(e, data, [-1e9, 1e9])
    assert kept[0].all()  # nothing is below -inf: every edge stays
    assert not kept[1].any()  # every change is below +inf: every edge goes


def test_kept_circuit_is_faithful_to_its_threshold(reverse):
    """Each removal costs < tau, so the final circuit's metric is below (#removed) * tau; and
    edges into receivers cut off from the output are removed."""
    _, e, data = reverse
    taus = [1e-4, 1e-2]
    kept, _ = acdc_sweep(e, data, taus)
    cache = e.cache(data.clean, zero=True)
    clean = e.logits(data.clean)
    g = e.graph
    for k, tau in zip(kept, taus):
        m = data.metric_values(e.logits(data.clean, (~k).float(), cache), clean).mean()
        assert m < (~k).sum() * tau
        # every kept ADDITION edge's sender is either an input or has a kept path onwards
        for s in g.add_sender[k[: g.n_add]].unique().tolist():
            if g.senders[s].kind != "input":
                assert k[: g.n_add][g.add_sender == s].any()
