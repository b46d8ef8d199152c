"""An engine that counts and time-stamps its forwards, and can stop a run at a budget.

Looping methods (activation patching, ACDC) can take hours on large graphs; counting their
patched forwards lets a run be cut short and extrapolated (`harness.bench.measure`)."""
from __future__ import annotations

import time
from typing import Optional

from harness.bench.clock import Clock
from harness.core.engine import Engine


class BudgetReached(Exception):
    """Raised by `CountingEngine` at a patched forward once its budget is spent."""


class CountingEngine(Engine):
    """The engine, counting and time-stamping its forwards.

    Every method reaches the model through `run` (`logits` and `cache` call it), `clean_run` or
    `run_patches` (`run_many` calls those), so `forwards` counts all passes, `patched` those with a
    patch or a hold (`Engine.run`'s `hold=`: the unit EAP-IG over activations loops over) and `rows`
    the batch rows processed.
    (grad-wrong's weight sites build a second engine on a copy of the weights; its forward is
    not counted.)"""

    def __init__(self, weights, graph=None, clock: Optional[Clock] = None):
        super().__init__(weights, graph)
        self.clock = clock or Clock(weights.device)
        self.arm()

    def arm(self, max_patched: Optional[int] = None, deadline: Optional[float] = None) -> None:
        """Reset the counters; stop at the next patched forward once `max_patched` patched forwards
        ran or `time.perf_counter()` passed `deadline` (at least one patched forward always runs)."""
        self.forwards = self.patched = self.rows = 0
        self.marks: list = []  # (patched?, mark) after every forward
        self.max_patched, self.deadline = max_patched, deadline
        self.stopped = None

    def _check_budget(self) -> None:
        if self.patched >= 1:
            if self.max_patched is not None and self.patched >= self.max_patched:
                self.stopped = self.clock.mark()
                raise BudgetReached(f"{self.patched} patched forwards")
            if self.deadline is not None and time.perf_counter() > self.deadline:
                self.stopped = self.clock.mark()
                raise BudgetReached("time budget")

    def _count(self, rows: int, patched: bool) -> None:
        self.forwards += 1
        self.rows += rows
        if patched:
            self.patched += 1
        self.marks.append((patched, self.clock.mark()))

    def run(self, tokens, patch=None, source=None, **kw):
        unit = patch is not None or kw.get("hold") is not None
        if unit:
            self._check_budget()
        tr = super().run(tokens, patch, source, **kw)
        self._count(int(tokens.shape[0]), unit)
        return tr

    def clean_run(self, tokens, source, positions=None):
        out = super().clean_run(tokens, source, positions)
        self._count(int(tokens.shape[0]), False)
        return out

    def run_patches(self, clean, patches):
        self._check_budget()
        out = super().run_patches(clean, patches)
        self._count(int(patches.shape[0]) * clean.batch, True)
        return out
