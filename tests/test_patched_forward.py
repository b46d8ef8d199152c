"""The patched forward from a clean run (`harness.core.patched_forward`) equals the reference
forward (`Engine.run`) for every supported architecture and every kind of patch, starts at the
first layer a chunk touches, and a metric scored at the scored positions alone equals the one
scored on every position."""
import pytest
import torch

from harness.core.evaluator import PatchedObjective
from harness.core.patched_forward import clean_run, patched_logits
from harness.core.weights import random_weights
from harness.core.engine import Engine, spread_order
from harness.run.runner import offline_tasks
from harness.tasks import get_task
from tests.test_engine_patching import CONFIGS, setup
from tests.test_pretrained_tasks import PRETRAINED, SMALL, small_task


def _reference(e, clean, patches, cache):
    return torch.stack([e.logits(clean, p, cache) for p in patches])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_patch_equals_the_reference_forward(name):
    e, clean, corr = setup(name, batch=3, pos=5)
    cache = e.cache(corr)
    run = clean_run(e, clean, cache)
    torch.testing.assert_close(run.logits, e.logits(clean), rtol=0, atol=1e-12)
    E = e.graph.n_edges
    g = torch.Generator().manual_seed(0)
    for density in (0.0, 0.003, 0.05, 0.5, 1.0):  # fractional values, DIRECT edges included
        m = (torch.rand(5, E, generator=g, dtype=torch.float64) < density) * torch.rand(5, E, generator=g, dtype=torch.float64)
        torch.testing.assert_close(patched_logits(e, run, m), _reference(e, clean, m, cache), rtol=0, atol=1e-10)
    one_edge = torch.eye(E, dtype=torch.float64)  # every edge alone, chunks straddling layers
    for i in range(0, E, 7):
        part = one_edge[i : i + 7]
        torch.testing.assert_close(patched_logits(e, run, part), _reference(e, clean, part, cache), rtol=0, atol=1e-10)


def test_zero_ablation_source_and_chosen_positions():
    e, clean, _ = setup("gpt2-like", batch=2, pos=6)
    cache = e.cache(clean, zero=True)
    cols = torch.tensor([1, 5])
    run = clean_run(e, clean, cache, cols)
    m = (torch.rand(4, e.graph.n_edges, generator=torch.Generator().manual_seed(3), dtype=torch.float64) < 0.1).double()
    torch.testing.assert_close(patched_logits(e, run, m), _reference(e, clean, m, cache)[:, :, cols], rtol=0, atol=1e-10)


def test_a_forward_starts_at_the_first_layer_its_patches_touch():
    """After the clean run is recorded, layer 0's weights are made NaN: patches into later
    layers still give the reference values (layer 0 is never recomputed), a patch into layer 0
    gives NaN (it is)."""
    e, clean, corr = setup("gpt2-like", batch=2, pos=5)
    g = e.graph
    cache = e.cache(corr)
    run = clean_run(e, clean, cache)
    late = torch.zeros(3, g.n_edges, dtype=torch.float64)
    late[0, g.dense_index[int(g.qkv_receiver[1, 0, 2]), 0]] = 1  # input -> layer-1 q input
    late[1, g.direct_index(1, "v", 0)] = 1  # a layer-1 DIRECT edge
    late[2, g.dense_index[g.output_receiver, 3]] = 1  # into the output
    expected = _reference(e, clean, late, cache)
    for k in list(e.w.params):
        if k.startswith("blocks.0."):
            e.w.params[k] = torch.full_like(e.w.params[k], float("nan"))
    torch.testing.assert_close(patched_logits(e, run, late), expected, rtol=0, atol=1e-10)
    early = torch.zeros(1, g.n_edges, dtype=torch.float64)
    early[0, g.dense_index[int(g.qkv_receiver[0, 1, 1]), 0]] = 1
    assert torch.isnan(patched_logits(e, run, early)).all()


def _tasks_with_data():
    for name in offline_tasks():
        task = get_task(name)
        yield name, Engine(task.load_model("cpu", torch.float64)), task.data("validation", 0).subset(torch.arange(4))
    for name in PRETRAINED:
        task = small_task(name)
        yield name, Engine(random_weights(SMALL[task.model], seed=1, init_range=0.1, dtype=torch.float64)), \
            task.data().subset(torch.arange(3))


def test_scoring_the_scored_positions_alone_equals_scoring_every_position():
    """Every task's metric and objectives read only `TaskData.scored_positions` (the premise of
    unembedding only those): evaluated on logits at those columns they equal the full evaluation."""
    from harness.core import objectives

    seen = 0
    for name, e, data in _tasks_with_data():
        for ablation in ("resample", "zero"):
            d = data.with_ablation(ablation)
            ev = PatchedObjective(e, d, "metric")
            patches = (torch.rand(3, e.graph.n_edges, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.2).double()
            full_clean = e.logits(d.clean)
            for objective in objectives.OBJECTIVES:
                ev.objective = objective
                got = ev(patches, per_example=True)
                want = torch.stack([objectives.evaluate(objective, e.logits(d.clean, p, ev.source), full_clean, d) / d.n
                                    for p in patches])
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=f"{name} {ablation} {objective}")
                seen += 1
    assert seen >= 3 * 2 * (len(offline_tasks()) + len(PRETRAINED))


def test_spread_order_visits_every_chunk_and_its_prefixes_cover_the_range():
    for n in (1, 2, 3, 7, 64, 1029):
        order = spread_order(n)
        assert sorted(order) == list(range(n))
        for k in (2, 4, 8):
            if n >= 4 * k:  # the first k chunks leave no gap wider than about 2n/k
                pts = sorted(order[:k]) + [n]
                assert max(b - a for a, b in zip(pts, pts[1:])) <= 2 * n / k


def test_many_chunks_in_spread_order_come_back_in_patch_order():
    """run_many visits chunks in spread order; the evaluator puts every value back at its patch."""
    e, clean, corr = setup("attn-only", batch=2, pos=4)
    from harness.core.data import Metric, TaskData
    from harness.core import objectives

    data = TaskData(clean, corr, torch.ones_like(clean, dtype=torch.bool),
                    Metric("l2", objectives.l2, {"pos_mask": "pos_mask"}), categorical=False)
    ev = PatchedObjective(e, data, "metric", chunk=3)
    patches = torch.eye(e.graph.n_edges, dtype=torch.float64)[:20]
    want = torch.stack([ev.dense(p) for p in patches])
    torch.testing.assert_close(ev(patches), want, rtol=0, atol=1e-12)
    assert ev.forwards == 7 + 20
