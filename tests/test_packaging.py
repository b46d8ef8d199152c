"""Installed as a user installs it: the package carries its ground truths, and a task that finds
none is an error rather than a run with empty AUCs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.core.ground_truth import GroundTruthError
from harness.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    """pyproject lists packages explicitly (for the ground_truth/ mapping); a new subpackage left
    out of the list would be missing from every non-editable install."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "harness").rglob("__init__.py")}
    assert set(cfg["packages"]) == on_disk | {"harness.ground_truth"}
    assert cfg["package-dir"] == {"harness.ground_truth": "ground_truth"}


def test_a_built_wheel_reads_its_own_ground_truths_from_any_folder(tmp_path):
    """Build the wheel, unpack it into a folder of its own, and load every stored ground truth from
    there, run from an unrelated folder: the same files and edges as the checkout's."""
    pytest.importorskip("setuptools")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel"), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    site = tmp_path / "site"
    unpack = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                             *map(str, (tmp_path / "wheel").glob("*.whl"))], capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr[-2000:]
    shipped = {p.name for p in (site / "harness" / "ground_truth").glob("*.json")}
    assert shipped == {p.name for p in (ROOT / "ground_truth").glob("*.json")}
    trained = {p.name for p in (site / "harness" / "ground_truth" / "trained").glob("*")}  # SIIT models and cards
    assert trained == {p.name for p in (ROOT / "ground_truth" / "trained").glob("trained-*")} and trained
    probe = ("import json, harness.core.ground_truth as g, harness.tasks as t\n"
             "print(json.dumps({'dir': str(g.ground_truth_dir()), 'gts': {n: {v: sorted(map(list, x.edges)) "
             "for v, x in c().ground_truths().items()} for n, c in t.TASKS.items() if c.has_ground_truth}}))")
    env = {k: v for k, v in os.environ.items() if k != "CIRCUIT_BENCH_GROUND_TRUTH"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert Path(got["dir"]).resolve() == (site / "harness" / "ground_truth").resolve()
    here = {n: {v: sorted(map(list, x.edges)) for v, x in c().ground_truths().items()}
            for n, c in TASKS.items() if c.has_ground_truth}
    assert got["gts"] == here and all(here.values())


def test_a_task_whose_ground_truth_is_missing_fails_with_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRCUIT_BENCH_GROUND_TRUTH", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GroundTruthError, match="no ground-truth file tracr-reverse"):
        get_task("tracr-reverse").ground_truths()
    with pytest.raises(SystemExit) as e:
        main(["run", "--tasks", "tracr-reverse", "--methods", "random", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "reinstall circuit-bench" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "results.csv").exists()
    # a task that defines no circuit is not affected, and `list` still describes every task
    assert get_task("induction").ground_truths() == {}
    assert main(["list", "--json"]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    assert "reinstall" in listed["tracr-reverse"]["ground_truth_problems"]["*"]
    assert listed["induction"]["ground_truth_problems"] == {}


def test_a_task_with_its_own_folder_and_no_files_is_told_how_to_declare_it(tmp_path):
    from harness.tasks import Task

    class NoFiles(Task):
        name, model, ground_truth_dir = "no-files", "m", tmp_path

    with pytest.raises(GroundTruthError, match="has_ground_truth = False"):
        NoFiles().ground_truths()
    NoFiles.has_ground_truth = False
    assert NoFiles().ground_truths() == {}
