"""benchmarks/gpu_timing.py, the prepared GPU run: its command line is one the CLI accepts, and on a
small model (CPU, to try it without a GPU) it writes the timing report and its target table."""
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import build_parser

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_timing.py"


@pytest.fixture(scope="module")
def gpu_timing():
    spec = importlib.util.spec_from_file_location("gpu_timing", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_command_line_is_the_ioi_sized_gpt2_run(gpu_timing):
    args = build_parser().parse_args(gpu_timing.bench_args("out", device="cpu"))
    assert (args.models, args.batch, args.seq_len) == (["gpt2"], [100], 16)
    assert set(gpu_timing.METHODS) <= set(args.methods) and args.single_edges == 100 and args.fresh


def test_without_cuda_it_says_so(gpu_timing, capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert gpu_timing.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_it_writes_timings_and_targets(gpu_timing, tmp_path, capsys):
    out = tmp_path / "timing-gpu"
    assert gpu_timing.main(["--out", str(out), "--device", "cpu", "--model", "tracr-xproportion", "--batch", "2",
                            "--budget-s", "5"]) == 0
    timing = pd.read_csv(out / "timing.csv")
    assert {"eap", "act-patch-edge", "forward-backward"} <= set(timing["method"])
    table = pd.read_csv(out / "gpu_targets.csv")
    assert list(table["quantity"]) == list(gpu_timing.TARGETS) and table["measured"].gt(0).all()
    text = capsys.readouterr().out
    assert "eap_seconds" in text and ("met" in text or "MISSED" in text)
