"""Compile a bundled RASP program with tracr and convert it to transformer_lens-format weights.

Conversion (docs/tracr.md#conversion-to-transformerlens, docs/tracr.md#conversion-to-transformerlens): haiku's per-layer query/key/value
[d_model, heads*d_head] become W_Q/W_K/W_V [heads, d_model, d_head] (head-major), `linear`
becomes W_O [heads, d_head, d_model]; MLPs map one to one; no LayerNorm; ReLU; attention
bidirectional unless compiled causal. The unembedding is a projection onto the output
variable's residual directions (not ACDC's identity slice, which only works when those
directions happen to sort first).

Compiling takes seconds (jax start-up), so converted weights are cached on disk, keyed by the
program's source and every compiler setting.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.programs.rasp_programs import PROGRAMS, ProgramSpec
from harness.core.weights import ModelConfig, Weights

CACHE_VERSION = 1


def cache_dir() -> Path:
    root = os.environ.get("CIRCUIT_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "circuit-bench"
    )
    return Path(root) / "tracr"


@dataclass
class TracrModel:
    """Converted weights plus what tasks need to encode inputs and read outputs."""

    weights: Weights
    residual_labels: list  # tracr's names of the residual dimensions, e.g. "tokens:x"
    input_encoding: dict  # token value (as str) -> id
    output_labels: list  # residual labels the unembedding projects onto, in output order
    bos: str
    categorical_output: bool

    def encode(self, seqs) -> torch.Tensor:
        """[[v1, v2, ...], ...] -> ids [batch, 1 + len] with BOS prepended."""
        enc = self.input_encoding
        return torch.tensor([[enc[self.bos]] + [enc[str(v)] for v in s] for s in seqs], dtype=torch.long)


def _cache_key(spec: ProgramSpec) -> str:
    import tracr  # noqa: F401  (version is part of the key)

    try:
        from importlib.metadata import version

        tv = version("tracr-pypi")
    except Exception:  # pragma: no cover
        tv = "unknown"
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            # a builder may carry its own source (a user program: the whole file, see user_program)
            "source": getattr(spec.build, "cache_source", None) or inspect.getsource(spec.build),
            "vocab": sorted(map(str, spec.vocab)),
            "max_seq_len": spec.max_seq_len,
            "causal": spec.causal,
            "bos": spec.compiler_bos,
            "pad": spec.compiler_pad,
            "mlp_exactness": spec.mlp_exactness,
            "tracr": tv,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def compile_program(spec: ProgramSpec):
    """Run tracr's compiler (labels reset so the residual layout is reproducible)."""
    import itertools

    from tracr.compiler import compiling
    from tracr.rasp import rasp

    rasp.RASPExpr._ids = itertools.count(1)
    program = spec.build()
    model = compiling.compile_rasp_to_model(
        program,
        vocab=set(spec.vocab),
        max_seq_len=spec.max_seq_len,
        causal=spec.causal,
        compiler_bos=spec.compiler_bos,
        compiler_pad=spec.compiler_pad,
        mlp_exactness=spec.mlp_exactness,
    )
    return program, model


def convert(spec: ProgramSpec, program, model) -> dict:
    """tracr's AssembledTransformerModel -> a plain dict (TL-format tensors and metadata)."""
    from tracr.rasp import rasp

    mc = model.model_config
    p = {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in model.params.items()}
    tok = p["token_embed"]["embeddings"]
    pos = p["pos_embed"]["embeddings"]
    d_model = tok.shape[1]
    H, dh = mc.num_heads, mc.key_size
    labels = list(model.residual_labels)
    sink = program.label
    out_idx = [i for i, lab in enumerate(labels) if lab == sink or lab.startswith(sink + ":")]
    categorical = rasp.is_categorical(program)
    W_U = np.zeros((d_model, len(out_idx)))
    W_U[out_idx, range(len(out_idx))] = 1.0
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    params = {"embed.W_E": t(tok), "pos_embed.W_pos": t(pos), "unembed.W_U": t(W_U), "unembed.b_U": torch.zeros(len(out_idx))}
    d_mlp = 0
    for L in range(mc.num_layers):
        a = f"transformer/layer_{L}/attn/"
        for m, name in zip("QKV", ("query", "key", "value")):
            params[f"blocks.{L}.attn.W_{m}"] = t(p[a + name]["w"].reshape(d_model, H, dh).transpose(1, 0, 2))
            params[f"blocks.{L}.attn.b_{m}"] = t(p[a + name]["b"].reshape(H, dh))
        params[f"blocks.{L}.attn.W_O"] = t(p[a + "linear"]["w"].reshape(H, dh, d_model))
        params[f"blocks.{L}.attn.b_O"] = t(p[a + "linear"]["b"])
        m = f"transformer/layer_{L}/mlp/"
        params[f"blocks.{L}.mlp.W_in"] = t(p[m + "linear_1"]["w"])
        params[f"blocks.{L}.mlp.b_in"] = t(p[m + "linear_1"]["b"])
        params[f"blocks.{L}.mlp.W_out"] = t(p[m + "linear_2"]["w"])
        params[f"blocks.{L}.mlp.b_out"] = t(p[m + "linear_2"]["b"])
        d_mlp = p[m + "linear_1"]["w"].shape[1]
    cfg = dict(
        name=spec.name, n_layers=mc.num_layers, n_heads=H, d_model=d_model, d_head=dh, d_mlp=d_mlp,
        d_vocab=tok.shape[0], d_vocab_out=len(out_idx), n_ctx=pos.shape[0], act_fn="relu",
        normalization_type=None, causal=bool(mc.causal), split_embed=True,
    )
    enc = {str(k): int(v) for k, v in model.input_encoder.encoding_map.items()}
    return {
        "cfg": cfg,
        "params": params,
        "residual_labels": labels,
        "input_encoding": enc,
        "output_labels": [labels[i] for i in out_idx],
        "bos": spec.compiler_bos,
        "categorical_output": bool(categorical),
    }


def load_tracr(name, use_cache: bool = True) -> TracrModel:
    """The compiled, converted model for a bundled program, or for a ProgramSpec (an analogue at
    non-default sizes: `rasp_programs.analogue_spec`); cached on disk."""
    if isinstance(name, ProgramSpec):
        spec, name = name, name.name
    elif name not in PROGRAMS:
        raise KeyError(f"unknown tracr program {name!r}; known: {', '.join(PROGRAMS)}")
    else:
        spec = PROGRAMS[name]
    path = cache_dir() / f"{name}-{_cache_key(spec)}.pt"
    data = None
    if use_cache and path.exists():
        try:
            data = torch.load(path, weights_only=True)
        except Exception:
            data = None  # a corrupt cache file is rebuilt, never trusted
    if data is None:
        program, model = compile_program(spec)
        data = convert(spec, program, model)
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a temporary name of this writer's own: two processes compiling one program at once (two
            # trainings started together) would otherwise rename each other's file away
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
            os.close(fd)
            try:
                torch.save(data, tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    cfg = ModelConfig(**data["cfg"])
    w = Weights(cfg, dict(data["params"]), {"source": "tracr", "program": name, "cache": str(path)})
    w.validate()
    return TracrModel(w, data["residual_labels"], data["input_encoding"], data["output_labels"], data["bos"], data["categorical_output"])
