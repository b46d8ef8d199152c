"""The up-front estimate (issue 21, item 5): a costly task says before it starts how long its runs
should take and how to make them cheaper; the arithmetic follows what the runner does."""
from __future__ import annotations

import pytest

import harness.run.estimate as estimate_mod
from harness.run.runner import RunConfig, _load_task, jobs_for, run


@pytest.fixture
def loaded():
    cfg = RunConfig(tasks=["tracr-xproportion"], methods=["eap", "structure"], variants=["noising", "fan-in"],
                    ablations=("resample",), controls=("trained", "reset"), bootstrap=0, progress=False)
    return cfg, _load_task("tracr-xproportion", cfg, {"tasks": {}}, lambda line: None)


def test_estimate_scales_the_timed_costs_as_the_runner_runs(loaded, monkeypatch):
    cfg, lt = loaded
    monkeypatch.setattr(estimate_mod, "_timed", lambda fn: 1.0)  # every timed call: 1 s
    jobs = jobs_for(cfg, log=lambda line: None)
    assert {(j[1], j[4]) for j in jobs} == {("eap", "trained"), ("eap", "reset"), ("structure", "trained")}
    n, k = lt.data.n, min(estimate_mod.CALIBRATION_EXAMPLES, lt.data.n)
    est = estimate_mod.estimate(lt, jobs, cfg)
    per = n / k  # 1 s on k examples, scaled to the task's n
    # the run, its rerun in the other precision (the tie floor), the reference forwards, faithfulness
    # (no bootstrap here, so no per-example rerun; with one, below, there is)
    trained = per + per + per + per
    reset = cfg.reset_seeds * (per + per + per)
    assert est.seconds == {"eap": pytest.approx(trained + reset)}  # model-free methods are not timed
    assert est.faithfulness_seconds == pytest.approx(per)
    cheaper = RunConfig(**{**cfg.__dict__, "faithfulness": False, "reset_seeds": 2})
    assert estimate_mod.estimate(lt, jobs, cheaper).seconds["eap"] == pytest.approx(3 * per + 2 * 3 * per)
    boot = RunConfig(**{**cfg.__dict__, "bootstrap": 1000})
    assert estimate_mod.estimate(lt, jobs, boot).seconds["eap"] == pytest.approx(trained + per + reset)
    line = est.line()
    assert line.startswith("tracr-xproportion: 3 runs expected to take about") and "eap" in line
    assert "--no-faithfulness" not in line or est.faithfulness_seconds >= 0.1 * est.total
    assert "Cheaper:" in line and "--device cuda" in line


def test_a_method_that_cannot_be_timed_is_named(loaded, monkeypatch):
    cfg, lt = loaded
    from harness.methods import all_methods

    spec = all_methods()["eap"]

    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(type(spec), "run", boom)
    est = estimate_mod.estimate(lt, jobs_for(cfg, log=lambda line: None), cfg)
    assert est.failed == {"eap": "MemoryError"} and "eap not timed (MemoryError)" in est.line()


def test_the_runner_announces_a_slow_task_before_its_runs(monkeypatch, tmp_path):
    import harness.run.runner as runner

    monkeypatch.setattr(runner, "SMALL_D_MODEL", 0)  # treat tracr as large
    monkeypatch.setattr(estimate_mod, "SLOW_SECONDS", 0.0)
    logs = []
    run(RunConfig(tasks=["tracr-xproportion"], methods=["eap"], variants=["noising"], ablations=("resample",),
                  controls=("trained",), bootstrap=0, progress=False, out=str(tmp_path / "o")), log=logs.append)
    assert any(line.startswith("tracr-xproportion: 1 run expected to take about") for line in logs)
    logs.clear()  # a resumed run has nothing left to estimate
    run(RunConfig(tasks=["tracr-xproportion"], methods=["eap"], variants=["noising"], ablations=("resample",),
                  controls=("trained",), bootstrap=0, progress=False, out=str(tmp_path / "o")), log=logs.append)
    assert not any("expected to take" in line for line in logs)


def test_looping_methods_are_timed_by_one_patched_forward_times_their_count(monkeypatch):
    from harness.methods import all_methods

    cfg = RunConfig(tasks=["tracr-xproportion"], methods=["act-patch-node"], variants=["metric"],
                    ablations=("resample",), controls=("trained",), bootstrap=0, progress=False)
    lt = _load_task("tracr-xproportion", cfg, {"tasks": {}}, lambda line: None)
    calls = []
    monkeypatch.setattr(estimate_mod, "_timed", lambda fn: calls.append(fn) or 1.0)
    est = estimate_mod.estimate(lt, jobs_for(cfg, log=lambda line: None), cfg)
    timing = estimate_mod._looping(all_methods()["act-patch-node"], "metric")
    count = timing.patched_forwards(lt.engine.graph, lt.data.n)
    n, k = lt.data.n, min(estimate_mod.CALIBRATION_EXAMPLES, lt.data.n)
    # one patched forward (1 s) x the count, once more in the other precision (the tie floor), plus
    # references and faithfulness (no bootstrap: no per-example rerun)
    assert est.seconds["act-patch-node"] == pytest.approx(2 * count + n / k + n / k)
    assert count > 1 and len(calls) == 4  # the forward in each precision, the references, faithfulness: nothing looped
