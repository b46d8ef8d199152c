"""Chunked runs (issue 21, item 5): a ranking computed a few examples at a time equals the ranking
of the whole batch, for every variant with per-example scores, so memory can be capped without
changing a result."""
from __future__ import annotations

import pytest
import torch

from harness.core.engine import Engine
from harness.core.weights import random_weights
from harness.core.architectures import ARCHITECTURES
from harness.methods import all_methods
from harness.methods.memory import examples_per_pass, traced_bytes_per_token

CHUNKABLE = [(m, v) for m, spec in all_methods().items() if spec.output == "ranking" and not spec.model_free
             for v in spec.variants if spec.supports_per_example(v)]


@pytest.fixture(scope="module")
def setups(tracr_tasks):
    return {n: (Engine(t.load_model(dtype=torch.float64)), t.data()) for n, t in tracr_tasks.items()}


def _close(a, b, scale):
    return torch.allclose(a.double(), b.double(), atol=1e-9 * scale, rtol=1e-9)


def test_chunks_give_the_batch_scores_for_every_variant(setups):
    """Chunks of 4 and 2 of tracr-xproportion's 6 examples, every variant with per-example
    scores under each reference it accepts (float64: the two sums differ only by round-off)."""
    engine, data = setups["tracr-xproportion"]
    assert CHUNKABLE and {"eap", "eap-ig", "grad-wrong", "act-patch-node"} <= {m for m, _ in CHUNKABLE}
    for m, v in CHUNKABLE:
        spec = all_methods()[m]
        for ref in spec.references_for(v):
            d = data.with_ablation(ref)
            whole = spec.run(engine, d, v, seed=0)
            scale = float(whole.abs().max().clamp_min(1e-12))
            assert _close(spec.run(engine, d, v, seed=0, chunk=4), whole, scale), (m, v, ref)


@pytest.mark.parametrize("m,v", [("eap", "noising"), ("eap", "noising-abs"), ("grad-wrong", "uniform/activation")])
def test_chunks_of_one_give_the_per_example_terms(setups, m, v):
    engine, data = setups["tracr-reverse"]
    spec = all_methods()[m]
    d = data.with_ablation("resample")
    whole, per_ex = spec.run(engine, d, v, seed=0), spec.run(engine, d, v, seed=0, per_example=True)
    scale = float(whole.abs().max().clamp_min(1e-12))
    assert _close(spec.run(engine, d, v, seed=0, chunk=1), whole, scale)
    got = spec.run(engine, d, v, seed=0, chunk=1, per_example=True)
    assert got.shape == per_ex.shape == (data.n, engine.graph.n_edges) and _close(got, per_ex, scale)


SELF_CHUNKED = [(m, v) for m, spec in all_methods().items() for v in sorted(spec.chunks_itself)]


def test_every_model_ranking_variant_can_run_in_chunks():
    """A ranking variant that runs the model either has per-example scores (split by the
    registry) or passes chunks itself; none sees the whole batch regardless."""
    for m, spec in all_methods().items():
        if spec.output == "ranking" and not spec.model_free:
            for v in spec.variants:
                assert spec.supports_per_example(v) != (v in spec.chunks_itself), (m, v)
    assert {v.split("/")[1] for m, v in SELF_CHUNKED} == {"weight-node", "weight-edge", "weight-edge-taylor"}


@pytest.mark.parametrize("model", ["tracr-xproportion", "ln-mlp"])
def test_weight_sites_in_chunks_equal_one_pass(setups, model, monkeypatch):
    """The weight sites (norms of batch gradients: not sums of per-example terms) in passes of 4,
    2 and 1 examples equal one pass, on tracr and on a LayerNorm + MLP model (whose frozen
    LayerNorm scales concatenate with the tokens), for every target; the passes are real."""
    from harness.core.data import TaskData
    from test_eap import tiny_task

    engine, data = setups[model] if model in setups else tiny_task("zero", seed=3)
    d = data.with_ablation("zero")
    spec = all_methods()["grad-wrong"]
    subsets = []
    real = TaskData.subset
    monkeypatch.setattr(TaskData, "subset", lambda self, idx: subsets.append(len(idx)) or real(self, idx))
    nonzero = 0
    for m, v in SELF_CHUNKED:
        whole = spec.run(engine, d, v)
        scale = float(whole.abs().max())
        nonzero += scale > 1e-6  # task-metric's gradient vanishes at the clean point
        for chunk in (4, 2, 1):
            subsets.clear()
            got = spec.run(engine, d, v, chunk=chunk)
            assert (sum(subsets), max(subsets, default=d.n)) == ((d.n, chunk) if chunk < d.n else (0, d.n)), (v, chunk)
            assert _close(got, whole, max(scale, 1e-6)), (v, chunk)  # zero gradients: round-off
        assert spec.passes_of(v, d.n, 2) == 2 and spec.passes_of(v, d.n, d.n) is None
    assert nonzero >= len(SELF_CHUNKED) - 3


def test_the_chunk_fits_the_budget_and_large_models_are_chunked():
    gpt2 = ARCHITECTURES["gpt2"]
    per_token = traced_bytes_per_token(gpt2, torch.float32)
    assert traced_bytes_per_token(gpt2, torch.float64) == 2 * per_token
    n = examples_per_pass(gpt2, seq_len=15, n_examples=100, dtype=torch.float32, budget_bytes=2 * 2**30)
    assert 1 <= n < 100 and n * 15 * per_token <= 2 * 2**30 < (n + 1) * 15 * per_token
    tracr = ARCHITECTURES["tracr-reverse"]
    assert examples_per_pass(tracr, seq_len=5, n_examples=6, dtype=torch.float64, budget_bytes=2 * 2**30) == 6
    assert examples_per_pass(gpt2, seq_len=15, n_examples=100, dtype=torch.float32, budget_bytes=1) == 1
    w = random_weights(ARCHITECTURES["redwood_attn_2l"], seed=0)
    assert examples_per_pass(w.cfg, 40, 10, w.dtype, 2 * 2**30) == 10


def test_a_chunked_run_records_what_an_unchunked_one_does(tmp_path):
    """The runner's chunked path (per-example terms once, faithfulness a chunk at a time) gives
    the same scores, AUCs, intervals and faithfulness as the whole batch."""
    from harness.run.runner import RunConfig, run

    def records(chunk):
        cfg = RunConfig(tasks=["tracr-xproportion"], methods=["eap", "grad-wrong"],
                        variants=["noising-abs", "uniform/activation"], ablations=("zero",), controls=("trained",),
                        progress=False, out=str(tmp_path / f"c{chunk}"), chunk=chunk)
        return {(r["method"], r["variant"]): r for r in run(cfg, log=lambda line: None).records()}

    whole, chunked = records(None), records(2)
    assert whole.keys() == chunked.keys() and len(whole) == 2
    for key, w in whole.items():
        c = chunked[key]
        assert c["examples_per_pass"] == 2 and "examples_per_pass" not in w
        assert torch.allclose(torch.tensor(c["scores"]), torch.tensor(w["scores"]), atol=1e-12, rtol=1e-9)
        for rw, rc in zip(w["rows"], c["rows"]):
            assert rw["auc"] == rc["auc"] and rw.get("auc_lo") == rc.get("auc_lo")
        assert abs(w["faithfulness"]["cpr"] - c["faithfulness"]["cpr"]) < 1e-9
