"""Reset networks: the task's model with what it learned destroyed and its architecture kept.

A method's AUC on a reset model is what it gets from the graph and the data alone; its AUC on
the trained model is only evidence of the circuit by the margin above that control.

- "acdc": ACDC's reset-network procedure (Conmy et al. 2023, appendix on reset networks; code:
  `subnetwork_probing/create_reset_networks.py::scramble_sd`). Within each layer, every attention
  parameter but the output ones (W_Q, W_K, W_V, b_Q, b_K, b_V) is permuted over heads, each
  with its own permutation, so a head's query, key and value weights no longer belong together;
  MLP input weights (W_in columns) and biases (b_in) are permuted over neurons, each with its own
  permutation, while W_out is kept. Embeddings, unembedding, W_O, b_O and LayerNorms are
  untouched. ACDC used one fixed seed per task; here the seed is the control's, so several give
  an interval. With grouped-query attention, keys and values are permuted (and redrawn, below)
  per key/value head, so the heads of a group still share theirs.
- "random": a random model of the same shape, for tracr models (one head per layer, where a head
  permutation changes nothing): each parameter tensor is redrawn from a normal distribution
  with that tensor's own mean and standard deviation (a constant tensor is kept), rounded to
  float32 values whatever the run's dtype.
"""
from __future__ import annotations

import torch

from harness.core.weights import Weights, compact_kv, expand_kv

KINDS = ("acdc", "random")
_HEAD_PARAMS = ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V")
_KV_PARAMS = ("W_K", "W_V", "b_K", "b_V")


def _grouped(k: str, cfg) -> bool:
    """A key/value tensor of a grouped-query model: reset per key/value head (its copies stay equal)."""
    return cfg.kv_group > 1 and ".attn." in k and k.rsplit(".", 1)[-1] in _KV_PARAMS


def _acdc(params: dict, g: torch.Generator, cfg) -> dict:
    out = {}
    for k in sorted(params):
        v = params[k]
        leaf = k.rsplit(".", 1)[-1]
        if _grouped(k, cfg):  # permuted over key/value heads
            kv = compact_kv(v, cfg)
            v = expand_kv(kv[torch.randperm(kv.shape[0], generator=g)], cfg)
        elif ".attn." in k and leaf in _HEAD_PARAMS:
            v = v[torch.randperm(v.shape[0], generator=g)]
        elif k.endswith("mlp.W_in"):
            v = v[:, torch.randperm(v.shape[1], generator=g)]
        elif k.endswith("mlp.b_in"):
            v = v[torch.randperm(v.shape[0], generator=g)]
        out[k] = v.contiguous()
    return out


def _random(params: dict, g: torch.Generator, cfg) -> dict:
    out = {}
    for k in sorted(params):
        v = compact_kv(params[k], cfg) if _grouped(k, cfg) else params[k]
        std = float(v.double().std()) if v.numel() > 1 else 0.0
        if std == 0.0:
            out[k] = params[k].clone()
            continue
        noise = torch.randn(v.shape, generator=g, dtype=torch.float64)
        # rounded through float32, so a float32 and a float64 run reset to the same network and a
        # control's ranking does not depend on the run's precision (harness.eval.round_off)
        out[k] = (float(v.double().mean()) + std * noise).float().to(v.dtype).to(v.device)
        if _grouped(k, cfg):
            out[k] = expand_kv(out[k], cfg)
    return out


def reset_weights(weights: Weights, kind: str, seed: int) -> Weights:
    """`weights` reset by `kind` (see the module docstring), deterministic for a seed; same
    config, same parameter names and shapes, so the same graph."""
    if kind not in KINDS:
        raise ValueError(f"unknown reset {kind!r}; choose one of {', '.join(KINDS)}")
    g = torch.Generator().manual_seed(seed)
    params = (_acdc if kind == "acdc" else _random)(weights.params, g, weights.cfg)
    w = Weights(weights.cfg, params, {**weights.provenance, "reset": kind, "reset_seed": seed})
    w.validate()
    return w
