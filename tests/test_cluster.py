"""Sweeps on Ray and SLURM (issue 19): the same records as the local runner, bit for bit; no
finished unit lost when a worker dies; one-line errors when an engine is absent or unreachable.

Ray runs a 2-CPU cluster started here; SLURM runs through submitit's local executor (separate
processes, as on nodes) and its debug executor (this process).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.run.executors import ExecutorError, RayExecutor, SlurmExecutor
from harness.run.runner import RunConfig, run
from harness.run.store import ResultStore
from harness.run.sweep import plan, run_sweep
from harness.run.units import Setup, Unit, run_units

TASKS = ["tracr-reverse", "tracr-xproportion"]
METHODS = ["eap", "grad-wrong", "act-patch-edge", "random"]
TIMED = {"seconds", "traceback"}  # what may differ between two runs of one unit: its time


def config(out: Path, **kw) -> RunConfig:
    return RunConfig(tasks=kw.pop("tasks", TASKS), methods=kw.pop("methods", METHODS), out=str(out), progress=False,
                     bootstrap=kw.pop("bootstrap", 0), **kw)


def records(out: Path) -> dict:
    """file name -> record without its time."""
    return {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMED}
            for p in sorted((out / "records").glob("*.json"))}


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = records(a), records(b)
    assert sorted(ra) == sorted(rb)
    for name in ra:
        assert ra[name] == rb[name], name  # scores, AUCs, intervals, faithfulness, fingerprints: equal bits
    assert all(r["status"] == "ok" for r in ra.values())
    assert sorted(p.name for p in (a / "edges").iterdir()) == sorted(p.name for p in (b / "edges").iterdir())
    for p in (a / "edges").iterdir():
        assert p.read_text() == (b / "edges" / p.name).read_text()
    ma, mb = json.loads((a / "meta.json").read_text()), json.loads((b / "meta.json").read_text())
    assert ma["tasks"] == mb["tasks"] and ma["layers"] == mb["layers"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run(config(out), log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_a_sweep_on_ray_equals_the_local_run(local_run, ray_cluster, tmp_path):
    store = run_sweep(config(tmp_path), RayExecutor(), log=lambda *a: None)
    assert_same_run(local_run, tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["executor"] == "ray" and meta["workers"] >= 1
    assert len(store.records()) == len(records(local_run))


def _busy_workers() -> list:
    """PIDs of this test's Ray workers that are running a unit (their title names the function)."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if not (d / "cmdline").read_bytes().startswith(b"ray::run_units"):
                continue
            pid = int(d.name)
            while pid > 1 and pid != me:  # a worker of this process's cluster, not another's
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if pid == me:
            out.append(int(d.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's workers in /proc")
def test_killing_a_ray_worker_mid_sweep_loses_no_finished_unit(local_run, ray_cluster, tmp_path):
    cfg = config(tmp_path)
    done: dict = {}
    sweep = threading.Thread(target=lambda: done.setdefault("store", run_sweep(cfg, RayExecutor(retries=3),
                                                                                 log=lambda *a: None)))
    sweep.start()
    killed, before = None, {}
    deadline = time.monotonic() + 120
    while killed is None and sweep.is_alive() and time.monotonic() < deadline:
        finished = list((tmp_path / "records").glob("*.json")) if (tmp_path / "records").exists() else []
        busy = _busy_workers() if len(finished) >= 3 else []
        if busy:
            before = {p.name: p.read_bytes() for p in finished}
            os.kill(busy[0], signal.SIGKILL)
            killed = busy[0]
        time.sleep(0.005)
    sweep.join(300)
    assert killed is not None, "no worker was caught running a unit"
    assert not sweep.is_alive() and "store" in done
    for name, text in before.items():  # what was finished before the kill is there, untouched
        assert (tmp_path / "records" / name).read_bytes() == text
    assert_same_run(local_run, tmp_path)  # and every unit finished: the killed one was run again


def test_a_sweep_through_submitit_equals_the_local_run(local_run, tmp_path):
    pytest.importorskip("submitit")
    ex = SlurmExecutor(folder=str(tmp_path / "jobs"), cluster="local", units_per_job=20, poll_seconds=0.2)
    run_sweep(config(tmp_path / "out"), ex, log=lambda *a: None)
    assert_same_run(local_run, tmp_path / "out")
    assert len(list((tmp_path / "jobs").glob("*_result.pkl"))) == len(ex.batches(plan(config(local_run),
                                                                                       ResultStore(tmp_path / "none"))))


def test_submitits_debug_executor_gives_the_same_records(local_run, tmp_path):
    pytest.importorskip("submitit")
    ex = SlurmExecutor(folder=str(tmp_path / "jobs"), cluster="debug", units_per_job=50, poll_seconds=0.0)
    run_sweep(config(tmp_path / "out"), ex, log=lambda *a: None)
    assert_same_run(local_run, tmp_path / "out")


def test_a_resumed_sweep_reuses_the_local_runs_records_and_fresh_redoes_them(local_run, tmp_path):
    import shutil

    shutil.copytree(local_run, tmp_path / "out")
    said: list = []
    ex = SlurmExecutor(folder=str(tmp_path / "jobs"), cluster="debug", units_per_job=50, poll_seconds=0.0)
    run_sweep(config(tmp_path / "out"), ex, log=said.append)
    n = len(records(local_run))
    assert f"reused {n} of {n} results" in said[-1]
    (tmp_path / "out" / "records" / sorted(records(local_run))[0]).unlink()
    said.clear()
    run_sweep(config(tmp_path / "out"), ex, log=said.append)
    assert f"reused {n - 1} of {n} results" in said[-1]
    assert_same_run(local_run, tmp_path / "out")
    said.clear()
    run_sweep(config(tmp_path / "out", fresh=True), ex, log=said.append)
    assert not any("reused" in s for s in said)
    assert_same_run(local_run, tmp_path / "out")


def test_a_failed_slurm_job_is_retried_then_recorded_never_dropped(tmp_path, monkeypatch):
    """A job that keeps failing is resubmitted `retries` times, then its unit is recorded as an
    error naming the job's failure; the other job's unit is written as usual. (submitit's local
    executor: each try a process of its own; its debug executor would stop in pdb.)"""
    pytest.importorskip("submitit")
    import harness.run.executors as executors

    marks = tmp_path / "tries"
    marks.mkdir()

    def flaky(cfg, setup, units):
        for u in units:
            (marks / f"{u.job[1]}-{time.monotonic_ns()}").touch()
        if any(u.job[1] == "random" for u in units):
            raise RuntimeError("node lost")
        return run_units(cfg, setup, units)

    monkeypatch.setattr(executors, "run_units", flaky)
    cfg = config(tmp_path / "out", tasks=["tracr-xproportion"], methods=["eap", "random"], controls=("trained",),
                 ablations=("resample",))
    ex = SlurmExecutor(folder=str(tmp_path / "jobs"), cluster="local", units_per_job=1, poll_seconds=0.2, retries=2)
    said: list = []
    run_sweep(cfg, ex, log=said.append)
    recs = ResultStore(tmp_path / "out").records()
    n_eap = sum(u.job[1] == "eap" for u in plan(cfg, ResultStore(tmp_path / "none")))
    assert len(recs) == n_eap + 1 and n_eap >= 1
    for r in recs:
        if r["method"] == "eap":
            assert r["status"] == "ok"
        else:
            assert r["status"] == "error" and "failed 3 times" in r["error"] and "RuntimeError: node lost" in r["error"]
    tries = sorted(p.name.split("-")[0] for p in marks.iterdir())
    assert tries == ["eap"] * n_eap + ["random"] * 3  # each eap job once; the failing one, then two more tries
    assert any("recorded as errors" in s for s in said)


def test_a_worker_loads_each_task_once_for_all_its_units(tmp_path):
    import harness.run.units as units

    units._LOADED.clear()
    cfg = config(tmp_path, tasks=["tracr-xproportion"], methods=["eap", "random"], controls=("trained",))
    todo = plan(cfg, ResultStore(tmp_path))
    todo[0] = Unit(todo[0].job, facts=True)
    out = run_units(cfg, Setup(), todo)
    assert [r.facts is not None and "tasks" in r.facts for r in out] == [True] + [False] * (len(todo) - 1)
    assert len(units._LOADED) == 1
    loaded = next(iter(units._LOADED.values()))[0]
    again = run_units(cfg, Setup(), [Unit(todo[0].job, True, out[0].record["fingerprint"], facts=True)])
    assert again[0].record is None and again[0].facts["tasks"] == out[0].facts["tasks"]  # reused, facts resent
    assert next(iter(units._LOADED.values()))[0] is loaded  # the task was not loaded again


def test_an_unreachable_ray_address_is_one_line_naming_the_fix():
    pytest.importorskip("ray")
    with pytest.raises(ExecutorError, match=r"no Ray cluster answers at 127\.0\.0\.1:1 .*`ray start --head`"):
        RayExecutor(address="127.0.0.1:1").start()
    with pytest.raises(ExecutorError, match="is not HOST:PORT"):
        RayExecutor(address="nowhere").start()


@pytest.mark.parametrize("module,executor", [("ray", lambda: RayExecutor()),
                                             ("submitit", lambda: SlurmExecutor(folder="x", cluster="local"))])
def test_a_missing_extra_is_one_line_naming_the_install(module, executor, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if absent
    extra = "ray" if module == "ray" else "slurm"
    with pytest.raises(ExecutorError, match=rf'needs {module}, which is not installed: pip install "circuit-bench\[{extra}\]"'):
        executor().start()


def test_the_cli_runs_a_program_and_a_suite_task_on_submitit_workers_as_it_runs_them_here(tmp_path, monkeypatch,
                                                                                            restore_tasks):
    """`--program FILE` and `suite:` tasks are registered in the driver; each worker process (here
    submitit's local executor: processes of their own) registers them again from the Setup."""
    pytest.importorskip("submitit")
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    program = Path(__file__).parent / "fixtures" / "programs" / "histogram.py"
    common = ["-q", "run", "--program", str(program), "--tasks", "suite:lib-count-3x4", "--methods", "eap", "random",
              "--controls", "trained", "--bootstrap", "0", "--no-progress"]
    assert main([*common, "--out", "here"]) == 0
    assert main([*common, "--out", "there", "--executor", "slurm", "--slurm-cluster", "local",
                 "--slurm-units-per-job", "50"]) == 0
    assert_same_run(tmp_path / "here", tmp_path / "there")
    assert {r["task"] for r in records(tmp_path / "there").values()} == {"program:histogram", "suite:lib-count-3x4"}
    assert (tmp_path / "there" / "report.md").exists()
    assert len(list((tmp_path / "there" / "slurm-jobs").glob("*_result.pkl"))) == 2  # a job per task


def test_a_driver_without_a_gpu_may_name_cuda_for_its_workers(tmp_path, monkeypatch):
    """--device is the workers' device under --executor ray/slurm: a CPU login node plans a GPU
    sweep; a worker without the device records each of its units as failed, saying why."""
    pytest.importorskip("submitit")
    import torch

    from harness.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    rc = main(["-q", "run", "--tasks", "tracr-xproportion", "--methods", "random", "--controls", "trained",
               "--ablation", "resample", "--bootstrap", "0", "--no-progress", "--device", "cuda", "--executor", "slurm",
               "--slurm-cluster", "local", "--retries", "0", "--out", "o"])
    assert rc == 2  # no unit ran
    (rec,) = ResultStore(tmp_path / "o").records()
    assert rec["status"] == "error" and "torch sees no CUDA device" in rec["error"]
