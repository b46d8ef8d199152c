"""Random scores: the floor every method must beat (expected AUC 0.5)."""
from __future__ import annotations

import torch

from harness.methods.registry import register


@register("random", "seeded random scores (chance baseline)", {"uniform": ({}, "i.i.d. uniform scores")}, seeded=True,
          chance=True)
def random_scores(engine, data, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(engine.graph.n_edges, generator=g, dtype=torch.float64)
