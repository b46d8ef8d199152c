"""Numerics never decide a ranking: float32 and float64 runs give the same AUCs.

Every offline task, both references, every default ranking variant: scored with the tie floor of
its objective (`harness.core.numerics`), measured on the run (`harness.eval.round_off`), the float32 and float64 AUCs
(both kinds, every ground truth, edge and node) are equal. That includes EAP-IG under the zero
reference on tracr-reverse, whose integration path (alpha x the clean embeddings) puts MLP
pre-activations exactly on ReLU kinks, where round-off picks the side: a floor assumed from a
constant could not absorb that, the measured one sees it
(docs/scoring.md#ties-round-off-and-degenerate-objectives).
"""
import numpy as np
import pytest
import torch

from harness.core.engine import Engine
from harness.eval.bootstrap import score_all
from harness.eval.round_off import measured_floor
from harness.methods import all_methods
from harness.methods.eap_ig import path_embeddings
from harness.run.runner import offline_tasks
from harness.tasks import get_task

def _aucs(task, engine, data, spec, variant):
    scores = spec.run(engine, data, variant, seed=0)
    measured = measured_floor(spec, engine, data, variant, 0, scores)
    out = {}
    for key, r in score_all(task, engine.graph, measured.ranked(scores), measured.floor).items():
        out[key] = (r.auc, r.pessimistic_auc)
    return out


def _same(a, b):
    return all((np.isnan(x) and np.isnan(y)) or x == pytest.approx(y, abs=1e-12) for x, y in zip(a, b))


@pytest.mark.parametrize("task_name", offline_tasks())
def test_float32_and_float64_give_the_same_aucs(task_name):
    task = get_task(task_name)
    engines = [Engine(task.load_model("cpu", dt)) for dt in (torch.float32, torch.float64)]
    base = task.data("validation", 0)
    checked, differing = 0, []
    for ablation in ("resample", "zero"):
        data = base.with_ablation(ablation)
        for name, spec in all_methods().items():
            if spec.output != "ranking" or name == "random":
                continue
            if spec.default_max_edges and engines[0].graph.n_edges > spec.default_max_edges:
                continue
            for v in spec.default_variants:
                if ablation not in spec.references_for(v):
                    continue
                a32, a64 = (_aucs(task, e, data, spec, v) for e in engines)
                checked += 1
                if not all(_same(a32[k], a64[k]) for k in a64):
                    differing.append((ablation, name, v))
    assert checked >= 20
    assert not differing, differing


def test_the_known_exception_is_relu_kinks_on_the_integration_path():
    """EAP-IG on tracr-reverse, zero reference: the hidden pre-activations on the path alpha x clean
    embeddings are mathematically 0 and computed as +-1e-16 (float64) or +-1e-7 (float32), so
    the two precisions put ReLU on different sides; at the clean point they agree."""
    task = get_task("tracr-reverse")
    data = task.data().with_ablation("zero")
    signs = {}
    for dt in (torch.float32, torch.float64):
        e = Engine(task.load_model("cpu", dt))
        points = [engine_in for engine_in in path_embeddings(e, data, 5)] + [None]
        for k, emb in enumerate(points):
            tr = e.run(data.clean, record=True, input_embeds=emb)
            for L, x in enumerate(tr.mlp_inputs):
                signs[(dt, k, L)] = (x @ e.w[f"blocks.{L}.mlp.W_in"] + e.w[f"blocks.{L}.mlp.b_in"]) > 0
    flips = {k: int((signs[(torch.float32, k, L)] != signs[(torch.float64, k, L)]).sum()) for k in range(6) for L in range(4)
             if (signs[(torch.float32, k, L)] != signs[(torch.float64, k, L)]).any()}
    assert flips and all(0 < k < 5 for k in flips)  # on the path, not at alpha = 0 or the clean point
    e, spec = Engine(task.load_model("cpu", torch.float64)), all_methods()["eap-ig"]
    floor = measured_floor(spec, e, data, "inputs-5", 0, spec.run(e, data, "inputs-5", seed=0))
    assert floor.round_off > 1e-3  # the measurement sees the kinks: not a difference round-off can hide


@pytest.mark.parametrize("task_name", ["tracr-reverse", "tracr-xproportion", "tracr-greaterthan", "tracr-induction"])
def test_acdc_keeps_the_same_circuits_in_float32_and_float64(task_name):
    """ACDC compares metric changes with thresholds, which no tie floor guards: its circuits are
    identical in both precisions (tracr-docstring too, 60 s; tracr-ioi not checked, minutes)."""
    task = get_task(task_name)
    for ablation in ("resample", "zero"):
        fams = [all_methods()["acdc"].run(Engine(task.load_model("cpu", dt)), task.data().with_ablation(ablation), "sweep")
                for dt in (torch.float32, torch.float64)]
        assert torch.equal(fams[0].circuits, fams[1].circuits), ablation


def test_float32_and_float64_runs_measure_the_same_floor():
    """A run measures its floor against itself in the other precision, so a float32 run and a
    float64 run of one model (tracr's float64 weights are its float32 weights widened) compare the
    same two runs and get the same floor: positive where they differ, at least one float32 ulp of
    the objective."""
    from harness.core.numerics import FLOAT32_EPS, MARGIN

    task = get_task("tracr-ioi")
    data = task.data().with_ablation("zero")  # weight-node accepts zero only
    engines = [Engine(task.load_model("cpu", dt)) for dt in (torch.float32, torch.float64)]
    for name, v in (("eap", "noising"), ("grad-wrong", "logit-diff-mse/weight-node")):
        spec = all_methods()[name]
        f32, f64 = (measured_floor(spec, e, data, v, 0, spec.run(e, data, v, seed=0)) for e in engines)
        assert f32.floor == f64.floor and f32.round_off == f64.round_off > 0
        assert f32.floor == max(MARGIN * f32.round_off, FLOAT32_EPS * f32.scale)
        assert f32.scale == pytest.approx(f64.scale, rel=1e-6)
    rnd = all_methods()["random"]
    assert measured_floor(rnd, engines[0], data, "uniform", 0, rnd.run(engines[0], data, "uniform", seed=0)).floor == 0.0


def test_a_float32_run_records_the_float64_ranking_and_its_floor(tmp_path):
    """End to end: `--dtype float32` and `--dtype float64` store the same scores, floor and AUCs
    (both rank the float64 scores, harness.eval.round_off), and the record says what was measured."""
    from harness.core.numerics import FLOAT32_EPS, MARGIN
    from harness.run.runner import RunConfig, run

    recs = {}
    for dt in ("float32", "float64"):
        store = run(RunConfig(tasks=["tracr-xproportion"], methods=["eap"], variants=["noising"], ablations=("resample",),
                              controls=("trained",), bootstrap=0, faithfulness=False, progress=False, dtype=dt,
                              out=str(tmp_path / dt)), log=lambda line: None)
        (recs[dt],) = list(store.records())
    a, b = recs["float32"], recs["float64"]
    assert a["dtype"] == "float32" and b["dtype"] == "float64"
    assert a["scores"] == b["scores"] and a["tie_floor"] == b["tie_floor"] and a["round_off"] == b["round_off"]
    assert [r["auc"] for r in a["rows"]] == [r["auc"] for r in b["rows"]]
    assert a["tie_floor"] == max(MARGIN * a["round_off"], FLOAT32_EPS * a["objective_scale"])


def test_a_random_reset_is_the_same_network_in_float32_and_float64():
    from harness.core.reset import reset_weights

    task = get_task("tracr-reverse")
    w32, w64 = (reset_weights(task.load_model("cpu", dt), "random", 3) for dt in (torch.float32, torch.float64))
    assert all(torch.equal(w32.params[k].double(), w64.params[k]) for k in w32.params if w32.params[k].is_floating_point())
