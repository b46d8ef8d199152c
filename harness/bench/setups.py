"""One thing to time on: a model's real configuration with random weights, a counting engine
and random data.

Random weights suffice because how long a method takes depends on shapes (layers, heads, widths,
vocabulary, batch, positions, number of edges) and on the number of passes it makes, never on the
weights' values. (One exception, stated where it shows: how many forwards ACDC makes depends on
which edges it prunes, so with random weights its count is not that of a trained model.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.bench.clock import Clock
from harness.bench.counting import CountingEngine
from harness.bench.data import random_task_data
from harness.core.architectures import ARCHITECTURES
from harness.core.data import TaskData
from harness.methods.patching import chunk_for

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class Setup:
    model: str
    device: torch.device
    dtype: torch.dtype
    batch: int
    seq_len: int
    engine: CountingEngine
    data: TaskData
    clock: Clock

    @property
    def graph(self):
        return self.engine.graph

    @property
    def chunk(self) -> int:
        """Units per batched forward at the patching methods' default max_rows."""
        return chunk_for(self.batch)


_WEIGHTS: dict = {}


# The model families after GPT-2 (harness.core.loading_hf.MODELS): the published config where its
# random weights fit a 24 GiB machine beside a run (as the engine holds them, float32, unembedding
# untied, keys and values repeated per query head: pythia-70m 0.3 GB, Qwen2.5-0.5B 2.7 GB,
# Llama-3.2-1B 6.4 GB), otherwise the same widths, heads and key/value heads with fewer layers and
# a smaller vocabulary (named "<model>-reduced": Gemma-2-2B would be 13.3 GB, Llama-3.1-8B 35.3 GB).
FAMILY_SETUPS = {
    "pythia-70m": ("pythia-70m", {}),
    "qwen2.5-0.5b": ("qwen2.5-0.5b", {}),
    "llama-3.2-1b": ("llama-3.2-1b", {}),
    "gemma-2-2b-reduced": ("gemma-2-2b", {"num_hidden_layers": 2, "vocab_size": 32000}),
    "llama-3.1-8b-reduced": ("llama-3.1-8b", {"num_hidden_layers": 1, "vocab_size": 32000}),
}


def setup_architecture(model: str):
    """The `ModelConfig` a setup named `model` times: ARCHITECTURES or FAMILY_SETUPS."""
    if model in ARCHITECTURES:
        return ARCHITECTURES[model]
    if model in FAMILY_SETUPS:
        from harness.core.loading_hf import family_architecture

        name, overrides = FAMILY_SETUPS[model]
        return family_architecture(name, **overrides)
    raise KeyError(f"unknown model {model!r}; known: {', '.join([*ARCHITECTURES, *FAMILY_SETUPS])}")


def make_setup(model: str, batch: int, seq_len: int, device="cpu", dtype="float32", seed: int = 0) -> Setup:
    """Random weights of `model`'s real configuration (`setup_architecture`), a counting engine and
    random data. seq_len is clipped to the model's context (tracr models: 6)."""
    from harness.core.weights import random_weights

    cfg = setup_architecture(model)
    dev = torch.device(device)
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    key = (model, seed, str(dev), str(dt))
    if key not in _WEIGHTS:
        _WEIGHTS.clear()  # keep one model in memory (GPT-2's random init is ~500 MB)
        _WEIGHTS[key] = random_weights(cfg, seed=seed).to(dev, dt)
    clock = Clock(dev)
    eng = CountingEngine(_WEIGHTS[key], clock=clock)
    P = min(seq_len, cfg.n_ctx)
    return Setup(model, dev, dt, batch, P, eng, random_task_data(cfg, batch, P, seed, dev), clock)
