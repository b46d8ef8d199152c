"""The source run that patched edges read from, and the reference outputs methods compare with.

One place builds them, so every method, faithfulness and ACDC patch from the same run:
- resample ablation (`data.ablation == "resample"`): the corrupted prompts' own run;
- zero ablation (ACDC's `--zero-ablation`): the clean prompts with every residual writer zeroed.
`source_logits` are the outputs with every edge patched from that source (under resample, the
corrupted prompts' logits; under zero ablation, the fully zero-patched clean run).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.data import TaskData
from harness.core.engine import Engine, SenderCache


def source_cache(engine: Engine, data: TaskData) -> SenderCache:
    """Sender outputs [n_senders, batch, pos, d_model] and q/k/v of the run patched from."""
    if data.ablation == "zero":
        return engine.cache(data.clean, zero=True)
    return engine.cache(data.corrupted)


def patch_all(engine: Engine) -> torch.Tensor:
    """[n_edges] ones: every edge patched."""
    return torch.ones(engine.graph.n_edges, device=engine.w.device, dtype=engine.w.dtype)


@dataclass
class References:
    """clean_logits, source_logits: [batch, pos, d_vocab_out]; source: the source run's cache."""

    clean_logits: torch.Tensor
    source_logits: torch.Tensor
    source: SenderCache


@torch.no_grad()
def references(engine: Engine, data: TaskData) -> References:
    clean_logits = engine.logits(data.clean)
    source = source_cache(engine, data)
    if data.ablation == "zero":
        source_logits = engine.logits(data.clean, patch_all(engine), source)
    else:
        source_logits = engine.logits(data.corrupted)
    return References(clean_logits, source_logits, source)
