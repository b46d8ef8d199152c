"""The objective under many patches at once: what patching, ACDC and faithfulness evaluate.

`PatchedObjective(engine, data, objective)` runs the clean and source references once, then maps
patches [k, n_edges] (1 = patched) to the objective with each patch applied, through
`Engine.run_many` (rows = patches x examples, chunked).
"""
from __future__ import annotations

from typing import Optional

import torch

from harness.core import objectives
from harness.core.data import TaskData
from harness.core.engine import Engine
from harness.core.references import source_cache


class PatchedObjective:
    """objective(patch) for many patches; `forwards` counts the patched forwards run."""

    def __init__(self, engine: Engine, data: TaskData, objective: str = "metric", chunk: Optional[int] = None,
                 max_rows: int = 256):
        self.engine, self.data, self.objective = engine, data, objective
        with torch.no_grad():
            self.clean_logits = engine.logits(data.clean)
        self.source = source_cache(engine, data)
        self.chunk, self.max_rows = chunk, max_rows
        self.forwards = 0

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch] objective of logits [batch, pos, vocab] against the clean logits."""
        return objectives.evaluate(self.objective, logits, self.clean_logits, self.data)

    def reduce(self, values: torch.Tensor, per_example: bool) -> torch.Tensor:
        """[batch] -> the mean, or per-example terms that sum to it (values / batch)."""
        return values / values.shape[0] if per_example else values.mean()

    @torch.no_grad()
    def __call__(self, patches: torch.Tensor, per_example: bool = False) -> torch.Tensor:
        """patches [k, n_edges] -> [k] objective (mean over examples) with each patch applied, or
        [k, batch] per-example terms (see `reduce`)."""
        out = []
        for _, logits in self.engine.run_many(self.data.clean, patches, self.source, self.max_rows, self.chunk):
            self.forwards += 1
            out += [self.reduce(self.values(lg), per_example) for lg in logits]
        return torch.stack(out) if out else patches.new_zeros(0)

    @torch.no_grad()
    def one(self, patch: torch.Tensor, per_example: bool = False) -> torch.Tensor:
        """The plain path for one patch [n_edges]: untiled tokens and source (the slow reference)."""
        self.forwards += 1
        return self.reduce(self.values(self.engine.logits(self.data.clean, patch, self.source)), per_example)

    @torch.no_grad()
    def baseline(self, per_example: bool = False) -> torch.Tensor:
        """The objective of the clean (unpatched) model."""
        return self.reduce(self.values(self.clean_logits), per_example)
