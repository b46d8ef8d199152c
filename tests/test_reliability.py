"""Issue 13, the parts done so far: one bad task never loses the others, concurrent writers never
collide, a second run on a folder is refused, and corrupt records are skipped and recomputed."""
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
