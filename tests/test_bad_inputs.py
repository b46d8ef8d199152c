"""Every bad input a tester tried (issue 13), each a class of its own: the exit status, and one
line on stderr that names the option or file, never a traceback nor the internal-error fallback.

docs/reliability.md lists the same table; `python tests/test_bad_inputs.py` prints it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from harness.cli import main, warning_line
from harness.core.ground_truth import ground_truth_dir

RUN = ["run", "--tasks", "tracr-xproportion", "--methods", "random", "--no-progress", "--bootstrap", "0",
       "--no-faithfulness"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _file(tmp: Path, name="a-file", text="x") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _gt_copy(tmp: Path, variant: str, text: str) -> None:
    """A copy of the ground-truth folder with one file replaced, named by CIRCUIT_BENCH_GROUND_TRUTH."""
    d = tmp / "gt"
    shutil.copytree(ground_truth_dir(), d)
    (d / f"tracr-xproportion.{variant}.json").write_text(text)
    os.environ["CIRCUIT_BENCH_GROUND_TRUTH"] = str(d)


def _fake_gpt2(tmp: Path, weights: str, content: bytes) -> Path:
    d = tmp / "W" / "gpt2"
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "gpt2"}')
    (d / "vocab.json").write_text("{}")
    (d / weights).write_bytes(content)
    return tmp / "W"


def _attn_only(tmp: Path, config: str, checkpoint: bytes) -> Path:
    d = tmp / "W" / "attn-only-4l"
    d.mkdir(parents=True)
    (d / "config.json").write_text(config)
    (d / "model_final.pth").write_bytes(checkpoint)
    return tmp / "W"


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_MARKER']}",))


def _malicious_bin(tmp: Path) -> Path:
    import torch

    os.environ["PAYLOAD_MARKER"] = str(tmp / "payload-ran")
    os.environ["CIRCUIT_BENCH_ALLOW_PICKLE"] = "1"  # allowed: transformers' weights_only check must still refuse it
    buf = io.BytesIO()
    torch.save({"wte.weight": _Payload()}, buf)
    return _fake_gpt2(tmp, "pytorch_model.bin", buf.getvalue())


def _run_dir(tmp: Path) -> Path:
    """A finished run's folder (tiny: one method on one tracr task)."""
    out = tmp / "done"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


_HELD: list = []


def _locked(tmp: Path) -> Path:
    """A folder whose lock another run holds (a second open file, as another process would)."""
    import fcntl

    out = tmp / "busy"
    out.mkdir()
    f = open(out / ".lock", "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write("pid 12345")
    f.flush()
    _HELD.append(f)
    return out


def _corrupt_record(tmp: Path) -> Path:
    out = _run_dir(tmp)
    next((out / "records").glob("*.json")).write_bytes(b'{"task": 1}')
    return out


def _results(tmp: Path, text: str | bytes) -> Path:
    p = tmp / "base.csv"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


# (id, argv(tmp) , exit status, what the one line must say, where it is said)
CASES = [
    # options, checked before any work
    ("seed-negative", lambda t: [*RUN, "--seed", "-1"], 2, "argument --seed: -1 is out of range", "err"),
    ("seed-huge", lambda t: [*RUN, "--seed", str(2**40)], 2, "argument --seed", "err"),
    ("seed-not-int", lambda t: [*RUN, "--seed", "one"], 2, "argument --seed: 'one' is not an integer", "err"),
    ("device-unknown", lambda t: [*RUN, "--device", "tpu"], 2, "argument --device: unknown device 'tpu'", "err"),
    ("device-malformed", lambda t: [*RUN, "--device", "cuda:x"], 2, "argument --device", "err"),
    ("threads-zero", lambda t: [*RUN, "--threads", "0"], 2, "argument --threads: 0 is out of range", "err"),
    ("threads-negative", lambda t: [*RUN, "--threads", "-2"], 2, "argument --threads", "err"),
    ("bootstrap-negative", lambda t: [*RUN, "--bootstrap", "-3"], 2, "argument --bootstrap", "err"),
    ("bootstrap-too-few", lambda t: [*RUN, "--bootstrap", "50"], 2, "give no 95% interval", "err"),
    ("bootstrap-reruns-negative", lambda t: [*RUN, "--bootstrap-reruns", "-1"], 2, "argument --bootstrap-reruns", "err"),
    ("reset-seeds-one", lambda t: [*RUN, "--reset-seeds", "1"], 2, "argument --reset-seeds: 1 is out of range", "err"),
    ("control-unknown", lambda t: [*RUN, "--controls", "shuffled"], 2, "argument --controls: invalid choice", "err"),
    ("dtype-unknown", lambda t: [*RUN, "--dtype", "float16"], 2, "argument --dtype: invalid choice", "err"),
    ("split-unknown", lambda t: [*RUN, "--split", "train"], 2, "argument --split: invalid choice", "err"),
    ("reference-unknown", lambda t: [*RUN, "--ablation", "mean"], 2, "argument --ablation: invalid choice", "err"),
    ("task-unknown", lambda t: ["run", "--tasks", "nope"], 2, "unknown task 'nope'; valid tasks:", "err"),
    ("suite-program-unknown", lambda t: ["run", "--tasks", "suite:gen-nope"], 2, "unknown suite program", "err"),
    ("preset-unknown", lambda t: ["run", "--preset", "nope"], 2, "argument --preset: invalid choice", "err"),
    ("train-siit-task-unknown", lambda t: ["train-siit", "--task", "nope"], 2, "unknown task 'nope'", "err"),
    ("train-siit-not-compiled", lambda t: ["train-siit", "--task", "ioi"], 2, "ioi is not a compiled (tracr) task", "err"),
    ("train-siit-trained-task", lambda t: ["train-siit", "--task", "trained-tracr-reverse"], 2,
     "trained-tracr-reverse is a trained model already: name its compiled program, tracr-reverse", "err"),
    ("ray-address-unreachable", lambda t: [*RUN, "--executor", "ray", "--ray-address", "127.0.0.1:1", "--out",
                                            str(t / "o")], 2, "no Ray cluster answers at 127.0.0.1:1", "err"),
    ("ray-address-malformed", lambda t: [*RUN, "--executor", "ray", "--ray-address", "head-node", "--out", str(t / "o")],
     2, "--ray-address 'head-node' is not HOST:PORT", "err"),
    ("executor-option-elsewhere", lambda t: [*RUN, "--slurm-partition", "gpu"], 2,
     "--slurm-partition applies to --executor slurm, not local", "err"),
    ("slurm-without-sbatch", lambda t: [*RUN, "--executor", "slurm", "--out", str(t / "o")] if shutil.which("sbatch") is None
     else pytest.skip("sbatch is installed here"), 2, "found no `sbatch` here", "err"),
    ("device-cuda-absent", lambda t: [*RUN, "--device", "cuda", "--out", str(t / "o")] if not _cuda()
     else pytest.skip("this machine has CUDA"), 2, "--device cuda asked for, but torch sees no CUDA device", "err"),
    ("unit-gpus-on-cpu", lambda t: [*RUN, "--executor", "ray", "--unit-gpus", "0.5", "--out", str(t / "o")], 2,
     "--unit-gpus 0.5 gives each unit a GPU that --device cpu leaves unused", "err"),
    ("slurm-fraction-of-a-gpu", lambda t: [*RUN, "--executor", "slurm", "--slurm-cluster", "local", "--device", "auto",
                                            "--unit-gpus", "0.5"], 2, "--unit-gpus 0.5: SLURM gives a job whole", "err"),
    ("unit-cpus-zero", lambda t: [*RUN, "--executor", "ray", "--unit-cpus", "0"], 2, "argument --unit-cpus", "err"),
    ("model-unknown", lambda t: ["run", "--model", "gpt-5", "--out", str(t / "o")], 2,
     "--model gpt-5: unknown model 'gpt-5' for --model; models: llama-3.2-1b", "err"),
    ("model-task-not-any-lm", lambda t: ["run", "--model", "llama-3.2-1b", "--tasks", "tracr-reverse", "--out", str(t / "o")],
     2, "task 'tracr-reverse' cannot run on another model; tasks that can: ioi, greaterthan, seed-pair", "err"),
    ("task-at-model-not-any-lm", lambda t: ["run", "--tasks", "docstring@pythia-70m", "--out", str(t / "o")], 2,
     "task 'docstring' cannot run on another model", "err"),
    ("method-unknown", lambda t: ["run", "--methods", "nope"], 2, "unknown method 'nope'", "err"),
    ("variant-unknown", lambda t: ["run", "--methods", "eap", "--variants", "nope"], 2, "unknown variant 'nope'", "err"),
    ("metric-unknown", lambda t: [*RUN, "--metric", "nope"], 2, "has no metric 'nope'", "err"),
    ("nothing-to-run", lambda t: [*RUN[:4], "grad-wrong", "--variants", "logit-diff-mse/weight-node", "--ablation", "resample"],
     2, "nothing to run", "err"),
    ("plugin-missing", lambda t: ["--plugin", "no_such_module", "list"], 2, "cannot load plugin 'no_such_module'", "err"),
    ("plugin-raises", lambda t: ["--plugin", str(_file(t, "p.py", "raise RuntimeError('boom')")), "list"], 2,
     "RuntimeError: boom", "err"),
    ("option-unknown", lambda t: ["run", "--frobnicate"], 2, "unrecognized arguments: --frobnicate", "err"),
    ("command-unknown", lambda t: ["frobnicate"], 2, "invalid choice: 'frobnicate'", "err"),
    # the output folder
    ("out-empty", lambda t: [*RUN, "--out", ""], 2, "--out is empty", "err"),
    ("out-is-a-file", lambda t: [*RUN, "--out", str(_file(t))], 2, "is a file, not a folder", "err"),
    ("out-under-a-file", lambda t: [*RUN, "--out", str(_file(t) / "sub")], 2, "which is a file", "err"),
    ("out-in-proc", lambda t: [*RUN, "--out", "/proc/circuit-bench-out"], 2, "cannot be written", "err"),
    ("weights-dir-missing", lambda t: [*RUN, "--weights-dir", str(t / "nope")], 2, "--weights-dir", "err"),
    ("weights-dir-a-file", lambda t: [*RUN, "--weights-dir", str(_file(t))], 2, "is not a folder", "err"),
    ("folder-in-use", lambda t: [*RUN, "--fresh", "--out", str(_locked(t))], 2, "is in use by another circuit-bench run",
     "err"),
    ("record-corrupt", lambda t: [*RUN, "--out", str(_corrupt_record(t))], 0, "it will be recomputed", "err"),
    # weights and data: that task fails, recorded, the run goes on (all failed here: exit 2)
    ("gpt2-pickle-only", lambda t: ["run", "--tasks", "ioi", "--methods", "random", "--no-progress", "--out", str(t / "o"),
                                    "--weights-dir", str(_fake_gpt2(t, "pytorch_model.bin", b"x"))],
     2, "a pickle that can run code when loaded", "out"),
    ("gpt2-malicious-pickle-allowed", lambda t: ["run", "--tasks", "ioi", "--methods", "random", "--no-progress",
                                                 "--out", str(t / "o"), "--weights-dir", str(_malicious_bin(t))],
     2, "could not be read", "out"),
    ("gpt2-garbage-safetensors", lambda t: ["run", "--tasks", "ioi", "--methods", "random", "--no-progress", "--out",
                                            str(t / "o"), "--weights-dir",
                                            str(_fake_gpt2(t, "model.safetensors", b"garbage"))],
     2, "SafetensorError", "out"),
    ("checkpoint-truncated", lambda t: ["run", "--tasks", "docstring", "--methods", "random", "--no-progress", "--out",
                                        str(t / "o"), "--weights-dir",
                                        str(_attn_only(t, json.dumps({"d_model": 512, "n_layers": 4, "d_head": 64,
                                                                      "n_heads": 8, "n_ctx": 2048, "d_vocab": 48262,
                                                                      "attn_only": True}), b"PK\x03\x04trunc"))],
     2, "CorruptWeightsError", "out"),
    ("config-incomplete", lambda t: ["run", "--tasks", "docstring", "--methods", "random", "--no-progress", "--out",
                                     str(t / "o"), "--weights-dir", str(_attn_only(t, "{}", b""))],
     2, "CorruptWeightsError", "out"),
    # ground truth: that file's rows are left out, the rest is scored, exit 1
    ("ground-truth-not-json", lambda t: (_gt_copy(t, "structural", "{"), [*RUN, "--out", str(t / "o")])[1],
     1, "ground truth 'structural' cannot be used", "out"),
    ("ground-truth-unknown-node", lambda t: (_gt_copy(t, "structural", json.dumps(
        {"task": "tracr-xproportion", "variant": "structural", "graph": "tracr-xproportion", "source": "test",
         "edges": [["blocks.9.attn.hook_result[:, :, 0]", "blocks.9.hook_resid_post"]]})),
        [*RUN, "--out", str(t / "o")])[1], 1, "is not in the tracr-xproportion graph", "out"),
    ("ground-truth-missing-keys", lambda t: (_gt_copy(t, "structural", '{"edges": []}'), [*RUN, "--out", str(t / "o")])[1],
     1, "missing key(s)", "out"),
    ("ground-truth-broken-list", lambda t: (_gt_copy(t, "structural", "["), ["list"])[1], 0,
     "ground truth structural cannot be used", "out"),
    # no ground truth at all for a task that has a circuit (e.g. a broken install): stop before any run
    ("ground-truth-all-missing", lambda t: ((t / "nogt").mkdir(), os.environ.__setitem__(
        "CIRCUIT_BENCH_GROUND_TRUTH", str(t / "nogt")), [*RUN, "--out", str(t / "o")])[2], 2,
     "no ground-truth file tracr-xproportion", "err"),
    # report
    ("report-no-folder", lambda t: ["report", str(t / "nope")], 2, "does not exist", "err"),
    ("report-a-file", lambda t: ["report", str(_file(t))], 2, "is not a folder", "err"),
    ("report-empty-folder", lambda t: ["report", str(t)], 2, "nothing to report", "err"),
    ("report-bad-meta", lambda t: (lambda d: ((d / "meta.json").write_bytes(b"\xff"), ["report", str(d)])[1])(_run_dir(t)),
     0, "warning: ignoring", "err"),
    ("report-bad-timing", lambda t: (lambda d: ((d / "timing.csv").write_text("a,b\n1,2\n"), ["report", str(d)])[1])(
        _run_dir(t)), 0, "no speed section", "err"),
    # compare
    ("compare-no-folder", lambda t: ["compare", str(t / "nope"), "--baseline", str(t / "nope")], 2, "no such file", "err"),
    ("compare-empty-csv", lambda t: ["compare", str(_run_dir(t)), "--baseline", str(_results(t, ""))], 2, "is empty", "err"),
    ("compare-missing-columns", lambda t: ["compare", str(_run_dir(t)), "--baseline", str(_results(t, "task,auc\nx,1\n"))],
     2, "lacks the column(s)", "err"),
    ("compare-binary", lambda t: ["compare", str(_run_dir(t)), "--baseline", str(_results(t, b"\x00\xff\xfe" * 50))], 2,
     "base.csv", "err"),
    ("compare-auc-not-a-number", lambda t: ["compare", str(_run_dir(t)), "--baseline", str(_results(
        t, "task,method,variant,ablation,ground_truth,level,auc\ntracr-xproportion,random,uniform,zero,acdc,edge,abc\n"))],
     2, "holds 1 value(s) that are not numbers", "err"),
    ("compare-no-rows", lambda t: ["compare", str(_run_dir(t)), "--baseline",
                                   str(_results(t, "task,method,variant,ablation,ground_truth,level,auc\n"))],
     2, "nothing to compare", "err"),
    ("compare-nothing-shared", lambda t: ["compare", str(_run_dir(t)), "--baseline", str(_results(
        t, "task,method,variant,ablation,ground_truth,level,auc\ntracr-reverse,eap,noising,zero,acdc,edge,0.9\n"))],
     2, "share no", "err"),
    ("compare-tolerance-negative", lambda t: ["compare", "a", "--baseline", "b", "--tolerance", "-1"], 2,
     "argument --tolerance", "err"),
    ("compare-time-factor-zero", lambda t: ["compare", "a", "--baseline", "b", "--time-factor", "0"], 2,
     "argument --time-factor", "err"),
    # other commands
    ("heads-task-unknown", lambda t: ["heads", "--task", "nope"], 2, "unknown task 'nope'", "err"),
    ("heads-target-unknown", lambda t: ["heads", "--task", "ioi", "--target", "nope"], 2, "unknown target 'nope'", "err"),
    ("graph-model-unknown", lambda t: ["graph", "--model", "nope"], 2, "unknown model 'nope'", "err"),
    ("bench-batch-zero", lambda t: ["bench", "--batch", "0"], 2, "argument --batch: 0 is out of range", "err"),
    ("bench-budget-negative", lambda t: ["bench", "--budget-s", "-1"], 2, "argument --budget-s", "err"),
    ("bench-model-unknown", lambda t: ["bench", "--models", "nope", "--out", str(t / "b")], 2, "unknown model 'nope'", "err"),
]


def run_case(argv_fn, tmp: Path) -> tuple:
    """(exit status, stdout, stderr) of the CLI on `argv_fn(tmp)`, in this process."""
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        argv = argv_fn(tmp)
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
        for w in caught:  # as the CLI prints them (pytest would otherwise keep them)
            err.write(warning_line(w.message))
    finally:
        while _HELD:
            _HELD.pop().close()
        os.environ.clear()
        os.environ.update(saved)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_an_exit_status(case, tmp_path, monkeypatch):
    name, argv_fn, code, says, where = case
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_case(argv_fn, tmp_path)
    assert "Traceback" not in out + err and "internal error" not in err
    assert rc == code, (out, err)
    lines = [ln for ln in (err if where == "err" else out).splitlines() if says in ln]
    assert lines, (out, err)
    if where == "err" and code:  # an error: the one line is all stderr says
        assert err.strip().count("\n") == 0, err
    if name == "gpt2-malicious-pickle-allowed":
        assert not (tmp_path / "payload-ran").exists()  # the pickle's code never ran
    if name.startswith("ground-truth") and rc == 1:  # the good ground truth is still scored
        import pandas as pd

        df = pd.read_csv(tmp_path / "o" / "results.csv")
        assert set(df["ground_truth"].dropna()) == {"acdc"} and df["auc"].notna().all()


def test_there_are_at_least_35_classes():
    assert len({c[0] for c in CASES}) == len(CASES) >= 35


if __name__ == "__main__":  # the table in docs/reliability.md
    import tempfile

    print("| input | exit | message |\n|---|---|---|")
    for name, fn, _, says, where in CASES:
        with tempfile.TemporaryDirectory() as d:
            cwd = os.getcwd()
            os.chdir(d)
            os.environ["HF_HUB_OFFLINE"] = "1"
            rc, out, err = run_case(fn, Path(d))
            os.chdir(cwd)
        text = err if where == "err" else out
        line = next((ln for ln in text.splitlines() if says in ln), text.strip().splitlines()[-1] if text.strip() else "")
        line = line.replace(d, "TMP").replace("|", "\\|")
        print(f"| {name} | {rc} | `{line[:220]}` |")
    sys.exit(0)
