"""The timing harness runs and writes sane figures. No assertion here is about speed: speed and
memory targets live in benchmarks/ (pytest-benchmark, ratios measured in one run)."""
import math

import pandas as pd
import pytest
import torch

from harness.bench.cases import cases
from harness.bench.clock import Clock
from harness.bench.data import random_task_data
from harness.bench.measure import measure
from harness.bench.profile import eap_breakdown
from harness.bench.setups import make_setup
from harness.bench.suite import BenchConfig
from harness.core.architectures import ARCHITECTURES
from harness.cli import main
from harness.methods.registry import METHODS, Timing, all_methods, get_method, register
from harness.report.timing_text import targets_text_for

REQUIRED = ["model", "method", "variant", "device", "batch", "seq_len", "seconds", "peak_mem_mb", "ratio_to_fwd_bwd",
            "extrapolated", "dtype", "torch", "threads", "repeats", "speedup_vs_act_patch", "speedup_vs_single_edge"]


def test_bench_quick_writes_timing_csv(tmp_path, capsys):
    threads = torch.get_num_threads()
    rc = main(["bench", "--quick", "--models", "tracr-xproportion", "--out", str(tmp_path), "--threads", "1",
               "--budget-s", "600", "--no-progress"])
    assert rc == 0
    assert torch.get_num_threads() == threads  # restored
    df = pd.read_csv(tmp_path / "timing.csv")
    assert set(REQUIRED) <= set(df.columns)
    assert set(df["model"]) == {"tracr-xproportion"}
    assert (df["device"] == "cpu").all() and (df["batch"] == 2).all() and (df["seq_len"] == 6).all()
    assert (df["dtype"] == "float32").all() and (df["torch"] == torch.__version__).all() and (df["threads"] == 1).all()
    assert (df["seconds"] > 0).all() and df["seconds"].map(math.isfinite).all()
    assert (df["peak_mem_mb"] > 0).all() and (df["repeats"] >= 1).all()
    single = (df["method"] == "act-patch-edge") & df["variant"].isin(["single", "dense"])
    assert single.sum() == 2
    assert (df["extrapolated"].astype(bool) == single).all()  # only the sampled one-edge-per-forward rows
    for _, s in df[single].iterrows():
        assert s["units_done"] == 8 and s["units_total"] == 38 and s["seconds"] > s["measured_seconds"]
    keys = set(zip(df["method"], df["variant"]))
    for k in [("forward", "no-grad"), ("forward-backward", "activations"), ("eap", "noising"), ("eap-ig", "inputs-2"),
              ("act-patch-node", "metric"), ("act-patch-edge", "batched"), ("acdc", "tau=0.001")]:
        assert k in keys
    sites = {v.split("/")[1] for v in get_method("grad-wrong").variants}  # every registered gradient site
    assert {v.split("/")[1] for m, v in keys if m == "grad-wrong"} == sites
    fb = df[(df["method"] == "forward-backward") & (df["variant"] == "activations")]
    assert fb["ratio_to_fwd_bwd"].iloc[0] == pytest.approx(1.0)
    grad = df["method"].isin({name for name, spec in all_methods().items() if spec.gradient})
    assert (df.loc[grad, "speedup_vs_act_patch"] > 0).all() and df.loc[~grad, "speedup_vs_act_patch"].isna().all()
    assert (df.loc[grad, "speedup_vs_single_edge"] > 0).all()
    assert not df[(df["method"] == "act-patch-edge") & (df["variant"] == "batched")]["speedup_vs_single_edge"].isna().any()
    assert (df["forwards"] >= 1).sum() >= len(df) - 1  # weight-site forwards run on a copy and are not counted
    eap = df[(df["method"] == "eap") & (df["variant"] == "noising")].iloc[0]
    assert eap["forwards"] == 2 and eap["patched_forwards"] == 0
    targets = pd.read_csv(tmp_path / "timing_targets.csv")
    assert {"eap_over_floor", "batched_speedup", "eap_target_met", "batching_target_met", "batched_over_dense"} <= set(targets.columns)
    assert ("forward-backward", "hf-gpt2") not in keys and targets["engine_over_hf"].isna().all()  # GPT-2 only
    text = targets_text_for(tmp_path)  # generated from the CSVs, printed by the command
    assert "1.15x" in text and text in capsys.readouterr().out
    report = (tmp_path / "report.md").read_text()
    assert "## Speed" in report and "timing.png" in report


def test_eap_breakdown_phases():
    s = make_setup("tracr-reverse", 2, 6)
    bd = eap_breakdown(s, repeats=1)
    assert list(bd) == ["cache_forward", "traced_forward", "backward", "stack_and_difference", "contract",
                        "floor_no_grad_forward", "floor_forward", "floor_backward"]
    assert all(v > 0 for v in bd.values())


def test_random_task_data():
    for name in ("gpt2", "tracr-xproportion"):
        cfg = ARCHITECTURES[name]
        d = random_task_data(cfg, 4, 6)
        assert d.clean.shape == d.corrupted.shape == (4, 6) and int(d.clean.max()) < cfg.d_vocab
        assert d.pos_mask[:, -1].all() and d.pos_mask.sum() == 4
        logits = torch.randn(4, 6, cfg.vocab_out)
        assert d.metric_values(logits, logits).shape == (4,)
        assert d.categorical == (cfg.vocab_out > 1)
        if d.categorical:
            assert (d.correct != d.wrong[..., 0]).all()
        else:
            assert torch.equal(d.metric_values(logits, logits), torch.zeros(4))
    with pytest.raises(ValueError, match="n_ctx"):
        random_task_data(ARCHITECTURES["tracr-reverse"], 2, 7)


def test_budget_stops_and_extrapolates():
    s = make_setup("tracr-reverse", 32, 6)
    by_key = {c.key: c for c in cases(BenchConfig(single_edges=5))}
    full = s.graph.n_edges
    batched = measure(s, by_key["act-patch-edge/batched"], max_patched=2)
    assert batched.extrapolated and batched.units_done == 2 and batched.units_total == math.ceil(full / s.chunk)
    assert batched.seconds >= batched.measured > 0 and batched.patched == 2
    single = measure(s, by_key["act-patch-edge/single"])
    assert single.extrapolated and single.units_done == 5 and single.units_total == full and single.patched == 5
    node = measure(s, by_key["act-patch-node/metric"])
    assert not node.extrapolated and node.units_done == node.units_total == node.patched


def test_clock_cpu_memory_and_time():
    clk = Clock("cpu")
    clk.start()
    x = torch.ones(2**20)  # 4 MB
    end, peak = clk.stop()
    assert clk.elapsed(end) > 0 and peak > 0 and x.sum() > 0
    assert clk.mem_kind.startswith("cpu-peak-rss")


def test_registered_timing_is_benchmarked():
    """A method registered with a Timing is a case with no edit in harness.bench."""
    all_methods()  # load the package's methods first, so the throwaway is not loaded over

    @register("timed-throwaway", "zero scores (test)", {"zeros": ({}, "zeros")}, gradient=True,
              timings=lambda bench: [Timing("zeros", label=f"zeros-{bench.single_edges}")])
    def zeros(engine, data):
        return torch.zeros(engine.graph.n_edges)

    try:
        found = {c.key: c for c in cases(BenchConfig(single_edges=3))}
        case = found["timed-throwaway/zeros-3"]
        assert case.gradient and case.units is None and case.source == "registry"
        sample = measure(make_setup("tracr-reverse", 2, 6), case)
        assert sample.seconds > 0 and sample.forwards == 0
    finally:
        METHODS.pop("timed-throwaway", None)
    assert "timed-throwaway/zeros-3" not in {c.key for c in cases(BenchConfig(single_edges=3))}


def test_hf_gpt2_holds_the_engines_weights_and_times_the_same_floor():
    """The HF reference of the engine's forward+backward (GPT-2 architectures): HF transformers'
    GPT-2 built from the engine's weights gives its logits (plus b_U) and, through the
    `forward-backward/hf-gpt2` case, the floor's gradient (at the token embeddings: the same as
    at token + position embeddings) in float64; other architectures get no such row."""
    from harness.bench.cases import forward_backward, hf_forward_backward
    from harness.bench.counting import CountingEngine
    from harness.bench.hf_reference import hf_applies, hf_gpt2, hf_logits
    from harness.bench.setups import Setup
    from harness.core.weights import ModelConfig, random_weights

    cfg = ModelConfig("tiny-gpt2", 2, 4, 16, 4, 50, 8, d_mlp=32, act_fn="gelu_new")
    assert hf_applies(cfg) and [m for m, c in ARCHITECTURES.items() if hf_applies(c)] == ["gpt2"]
    w = random_weights(cfg, seed=2, dtype=torch.float64)
    eng = CountingEngine(w)
    dev = torch.device("cpu")
    s = Setup("tiny-gpt2", dev, torch.float64, 3, 6, eng, random_task_data(cfg, 3, 6, 0, dev), Clock(dev))
    with torch.no_grad():
        ours = eng.run(s.data.clean).logits
        theirs = hf_logits(hf_gpt2(w), w, w["embed.W_E"][s.data.clean])
        cols = torch.tensor([2, 5])
        theirs_at = hf_logits(hf_gpt2(w), w, w["embed.W_E"][s.data.clean], cols)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(theirs, ours, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(theirs_at, ours[:, cols], rtol=1e-10, atol=1e-10)
    g_ours, g_hf = forward_backward(s), hf_forward_backward(s)
    assert g_ours.shape == (1,) + g_hf.shape and g_hf.abs().max() > 1e-6
    torch.testing.assert_close(g_hf, g_ours[0], rtol=1e-9, atol=1e-12)
    case = next(c for c in cases(BenchConfig()) if c.key == "forward-backward/hf-gpt2")
    assert case.applies(s) and not case.applies(make_setup("tracr-xproportion", 2, 6))
