"""The objective under many patches at once: what patching, ACDC and faithfulness evaluate.

`PatchedObjective(engine, data, objective)` runs the clean and source references once, then maps
patches [k, n_edges] (1 = patched) to the objective with each patch applied, through
`Engine.run_many` (rows = patches x examples, chunked), which starts each forward at the first
layer the patches touch and unembeds only the scored positions (`TaskData.scored_positions`).
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
        self.positions, self.scored = data.scored()  # the unembedded columns and the fields there
        self.source = source_cache(engine, data)
        self.clean = engine.clean_run(data.clean, self.source, self.positions)
        self.clean_logits = self.clean.logits  # [batch, n_positions, vocab]
        self.chunk, self.max_rows = chunk, max_rows
        self.forwards = 0

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch] objective of logits [batch, n_positions, vocab] (at `positions`) against the
        clean logits."""
        return objectives.evaluate(self.objective, logits, self.clean_logits, self.scored)

    def reduce(self, values: torch.Tensor, per_example: bool) -> torch.Tensor:
        """[batch] -> the mean, or per-example terms that sum to it (values / batch)."""
        return values / values.shape[0] if per_example else values.mean()

    @torch.no_grad()
    def __call__(self, patches: torch.Tensor, per_example: bool = False, chunk: Optional[int] = None) -> torch.Tensor:
        """patches [k, n_edges] -> [k] objective (mean over examples) with each patch applied, or
        [k, batch] per-example terms (see `reduce`); `chunk` patches per forward (default: the
        evaluator's)."""
        out: dict = {}
        for i, logits in self.engine.run_many(self.data.clean, patches, self.source, self.max_rows,
                                              chunk or self.chunk, clean=self.clean):
            self.forwards += 1
            out.update({i + j: self.reduce(self.values(lg), per_example) for j, lg in enumerate(logits)})
        return torch.stack([out[i] for i in range(len(out))]) if out else torch.zeros(0, dtype=self.engine.w.dtype)

    @torch.no_grad()
    def dense(self, patch: torch.Tensor, per_example: bool = False) -> torch.Tensor:
        """The reference path for one patch [n_edges]: `Engine.run` from the embedding, every
        receiver computed and every position unembedded, as patching ran before the patched
        forward (the slow reference the benchmarks' speed-up targets are stated against); the
        objective reads the scored columns of it."""
        self.forwards += 1
        logits = self.engine.logits(self.data.clean, patch, self.source)[:, self.positions.to(self.engine.w.device)]
        return self.reduce(self.values(logits), per_example)

    @torch.no_grad()
    def baseline(self, per_example: bool = False) -> torch.Tensor:
        """The objective of the clean (unpatched) model."""
        return self.reduce(self.values(self.clean_logits), per_example)
