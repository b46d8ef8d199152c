"""Every registered method and variant gives a finite score for every edge (or bool circuits of
the graph's width) on both tracr tasks."""
import pytest
import torch

from harness.core.engine import Engine
from harness.methods import CircuitFamily, all_methods
from harness.eval.scoring import score_edges_and_nodes

JOBS = [(m, v) for m, spec in all_methods().items() for v in spec.variants]
EXPECTED = {"act-patch-edge", "act-patch-node", "acdc", "eap", "eap-ig", "grad-wrong", "random"}


def test_registry_knows_the_suite():
    assert EXPECTED <= set(all_methods())
    sites = {v.split("/")[1] for v in all_methods()["grad-wrong"].variants}
    assert {"activation", "weight-node", "weight-edge", "weight-edge-taylor"} <= sites
    for spec in all_methods().values():
        assert set(spec.default_variants) <= set(spec.variants)
        assert all(isinstance(d, str) and d for _, d in spec.variants.values())


@pytest.fixture(scope="module")
def setups(tracr_tasks):
    return {n: (t, Engine(t.load_model()), t.data()) for n, t in tracr_tasks.items()}


@pytest.mark.parametrize("task", ["tracr-xproportion", "tracr-reverse"])
def test_every_variant_scores_every_edge(setups, task):
    t, e, data = setups[task]
    gt = t.ground_truths()["acdc"].edge_mask(e.graph)
    E = e.graph.n_edges
    for m, v in JOBS:
        spec = all_methods()[m]
        # ACDC and SP: a short sweep keeps this fast; the full runs are tested in their own files
        opts = {"acdc": {"thresholds": [1e-4, 1e-2]}, "sp": {"epochs": 2, "n_lambdas": 2}}.get(m, {})
        for ref in spec.references_for(v):  # every reference the variant accepts
            out = spec.run(e, data.with_ablation(ref), v, **opts)
            check_output(spec, m, v, out, E)
            score_edges_and_nodes(e.graph, out.circuits if spec.output == "family" else out, gt)  # scoreable


def check_output(spec, m, v, out, E):
    if spec.output == "family":
        assert isinstance(out, CircuitFamily), (m, v)
        assert out.circuits.dtype == torch.bool and out.circuits.dim() == 2 and out.circuits.shape[1] == E, (m, v)
        assert out.circuits.shape[0] >= 2, (m, v)  # a family of one circuit gives no curve
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (E,), (m, v)
        assert torch.isfinite(out).all(), (m, v)
