"""Issue 13: one bad task never loses the others, concurrent writers never collide, a second run on a
folder is refused, corrupt records are skipped and recomputed, kill -9 loses nothing, a stale
option is recomputed. (Bad inputs, one class each: tests/test_bad_inputs.py.)"""
from __future__ import annotations

import json
import multiprocessing as mp
import warnings

import pytest

from harness.cli import main
from harness.run.runner import RunConfig, run
from harness.run.store import FolderLocked, ResultStore
from harness.tasks import TASKS

FAST = dict(tasks=["tracr-xproportion"], methods=["random", "eap"], variants=["uniform", "noising"], bootstrap=0,
            progress=False, faithfulness=False)


def test_a_task_that_fails_to_load_is_recorded_and_the_others_run(tmp_path, monkeypatch, capsys):
    def broken(self, *a, **k):
        raise RuntimeError("weights.pth: unexpected end of file (truncated?)\nsecond line")

    monkeypatch.setattr(TASKS["tracr-reverse"], "load_model", broken)
    rc = main(["run", "--tasks", "tracr-reverse", "tracr-xproportion", "--methods", "random", "--out", str(tmp_path),
               "--no-progress", "--bootstrap", "0", "--no-faithfulness"])
    out = capsys.readouterr().out
    assert rc == 1 and "failed" in out  # some work failed: the exit status says so
    st = ResultStore(tmp_path)
    bad = st.get("tracr-reverse", "random", "uniform", "zero")
    assert bad["status"] == "error" and "truncated" in bad["error"] and "\n" not in bad["error"]
    assert "could not load or prepare task tracr-reverse" in bad["error"]
    assert st.get("tracr-xproportion", "random", "uniform", "zero")["status"] == "ok"


def _write_many(folder, worker, n):
    st = ResultStore(folder)
    for i in range(n):
        st.write({"task": "t", "method": "m", "variant": f"v{i % 7}", "ablation": "zero", "status": "ok", "rows": [],
                  "writer": worker, "i": i})


def test_concurrent_writers_never_collide(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(tmp_path, w, 200)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    recs = ResultStore(tmp_path).records()
    assert len(recs) == 7 and all(r["task"] == "t" for r in recs)
    assert not list((tmp_path / "records").glob("*.tmp"))  # no temporary left behind


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path):
    st = ResultStore(tmp_path)
    with st.lock():
        with pytest.raises(FolderLocked, match="in use by another circuit-bench run"):
            run(RunConfig(out=str(tmp_path), fresh=True, **FAST))
    assert run(RunConfig(out=str(tmp_path), **FAST)).get("tracr-xproportion", "eap", "noising", "zero")["status"] == "ok"


@pytest.mark.parametrize("content", [b"{}", b'{"task": "tracr-xproportion", "method": "eap", "variant": "noising", '
                                              b'"ablation": "zero", "rows": "oops"}', b"\xff\xfe not utf-8", b"[1, 2]", b""])
def test_a_corrupt_record_is_skipped_with_its_name_and_recomputed(tmp_path, content):
    run(RunConfig(out=str(tmp_path), **FAST))
    st = ResultStore(tmp_path)
    p = st.path("tracr-xproportion", "eap", "noising", "zero")
    p.write_bytes(content)
    (st.records_dir / "a-folder.json").mkdir()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = run(RunConfig(out=str(tmp_path), **FAST))
    assert any(p.name in str(x.message) for x in w)
    assert json.loads(p.read_text())["status"] == "ok"  # recomputed
    assert again.get("tracr-xproportion", "eap", "noising", "zero")["rows"]


def test_a_broken_checkpoint_names_its_folder_and_the_fix(tmp_path, capsys, monkeypatch):
    """The issue's reproducer: an attn-only-4l folder with a config lacking d_model and a truncated
    checkpoint. docstring fails with one line naming the folder; tracr-xproportion completes."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = tmp_path / "W" / "attn-only-4l"
    w.mkdir(parents=True)
    (w / "config.json").write_text("{}")
    (w / "model_final.pth").write_bytes(b"PK\x03\x04truncated")
    out = tmp_path / "out"
    rc = main(["run", "--tasks", "docstring", "tracr-xproportion", "--methods", "random", "--weights-dir", str(tmp_path / "W"),
               "--out", str(out), "--no-progress", "--bootstrap", "0"])
    assert rc == 1
    st = ResultStore(out)
    err = st.get("docstring", "random", "uniform", "zero")["error"]
    assert "CorruptWeightsError" in err and str(w) in err and "fix:" in err and "Traceback" not in err
    assert st.get("tracr-xproportion", "random", "uniform", "zero")["status"] == "ok"


# --- interruption, stale options, concurrent runs (whole processes, as a user runs them) ---

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

CMD = [sys.executable, "-m", "harness.cli", "run", "--tasks", "tracr-xproportion", "tracr-reverse", "--methods", "eap",
       "random", "--no-progress", "--no-faithfulness"]


def _results_of(folder) -> dict:
    """Record name -> its result (scores and rows), without the wall-clock seconds."""
    out = {}
    for p in sorted((folder / "records").glob("*.json")):
        rec = json.loads(p.read_text())
        out[p.name] = {k: v for k, v in rec.items() if k not in ("seconds",)}
    return out


def test_kill_9_mid_run_loses_nothing_and_resume_recomputes_nothing(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    subprocess.run([*CMD, "--out", str(whole)], check=True, capture_output=True)
    proc = subprocess.Popen([*CMD, "--out", str(part)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((part / "records").glob("*.json"))) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.read_bytes() for p in (part / "records").glob("*.json")}
    assert 5 <= len(before) < len(_results_of(whole))  # killed in the middle
    resumed = subprocess.run([*CMD, "--out", str(part)], check=True, capture_output=True, text=True)
    assert f"reused {len(before)} of {len(_results_of(whole))}" in resumed.stdout
    assert "recomputing" not in resumed.stdout
    assert {n: (part / "records" / n).read_bytes() for n in before} == before  # finished: kept, not rewritten
    assert _results_of(part) == _results_of(whole)  # bitwise: scores, AUCs, intervals, fingerprints


def test_a_stale_option_or_input_is_recomputed_and_said_once(tmp_path, monkeypatch, capsys):
    import shutil

    from harness.core.ground_truth import ground_truth_dir

    args = ["run", "--tasks", "tracr-xproportion", "--methods", "eap", "--variants", "noising", "noising-abs",
            "--ablation", "zero", "--controls", "trained", "--no-progress", "--no-faithfulness", "--out", str(tmp_path / "o")]
    assert main([*args, "--bootstrap", "0"]) == 0
    st = ResultStore(tmp_path / "o")
    assert "auc_lo" not in st.get("tracr-xproportion", "eap", "noising", "zero")["rows"][0]
    capsys.readouterr()
    assert main(args) == 0  # the default --bootstrap 1000: the stored results have no intervals
    said = capsys.readouterr().out
    assert said.count("recomputing") == 1 and "--bootstrap 0 -> 1000" in said
    assert all("auc_lo" in r for r in st.get("tracr-xproportion", "eap", "noising", "zero")["rows"])
    assert main(args) == 0 and "reused 2 of 2" in capsys.readouterr().out
    gt = tmp_path / "gt"  # an edited ground-truth file: the AUCs are recomputed against it
    shutil.copytree(ground_truth_dir(), gt)
    f = gt / "tracr-xproportion.acdc.json"
    body = json.loads(f.read_text())
    body["edges"] = body["edges"][:-3]
    f.write_text(json.dumps(body))
    monkeypatch.setenv("CIRCUIT_BENCH_GROUND_TRUTH", str(gt))
    assert main(args) == 0
    said = capsys.readouterr().out
    assert said.count("recomputing") == 1 and "ground truth changed (tracr-xproportion.acdc.json)" in said
    row = next(r for r in st.get("tracr-xproportion", "eap", "noising", "zero")["rows"] if r["ground_truth"] == "acdc")
    assert row["n_positive"] == len(body["edges"])


def test_two_runs_at_once_on_one_folder_leave_every_record_valid(tmp_path):
    out = tmp_path / "o"
    procs = [subprocess.Popen([*CMD, "--bootstrap", "0", "--out", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    res = [(p.wait(), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in res)
    assert codes[0] == 0 and codes[1] in (0, 2)
    for rc, _, err in res:
        if rc == 2:  # refused: one line naming the folder
            assert "is in use by another circuit-bench run" in err and "Traceback" not in err
    st = ResultStore(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a corrupt record would warn
        recs = st.records()
    assert len(recs) == 28 and all(r["status"] == "ok" for r in recs)  # 16 trained, 12 reset controls (eap)
    assert not list((out / "records").glob("*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(SystemExit) as e:
        main(["run", "--tasks", "tracr-xproportion", "--methods", "random", "--out", str(ro / "o")])
    assert e.value.code == 2 and "no permission to write" in capsys.readouterr().err
