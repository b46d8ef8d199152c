"""What a method sees of a task: one split's tokens, per-example fields and its metric.

Every per-example tensor (tokens, scored positions, answers, and the extra `rows` a metric
reads) is a field with the batch as its first dimension, so `subset` re-indexes all of it
together and a bootstrap resample can never pair one example's answers with another's tokens.
A metric is a pure function of (logits, clean_logits, **fields) from `harness.core.objectives`,
named with the fields it reads (`Metric.reads`), never a closure over data.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import torch

SPLITS = ("validation", "test")
ABLATIONS = ("resample", "zero")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    return split


@dataclass(frozen=True)
class Metric:
    """A task metric: `fn(logits, clean_logits, **kwargs) -> [batch]`.

    reads: keyword -> the name of a per-example field of the data (`pos_mask`, `correct`,
        `wrong`, `counterfactual` or a key of `TaskData.rows`), passed as that keyword.
    const: keyword -> a value shared by every example (e.g. Greater-Than's 100 year tokens).
    acdc_thresholds: ACDC's threshold sweep for this metric (experiments/launch_spreadsheet.py,
        docs/scoring.md#acdc-threshold-sweeps); empty: the method's default.
    """

    name: str
    fn: Callable
    reads: dict = field(default_factory=dict)
    const: dict = field(default_factory=dict)
    acdc_thresholds: tuple = ()


def log_thresholds(lo: float, hi: float, n: int) -> tuple:
    """10 ** linspace(lo, hi, n), ACDC's way of writing a threshold sweep."""
    return tuple(float(t) for t in 10 ** np.linspace(lo, hi, n))


@dataclass
class TaskData:
    """One split of a task.

    clean, corrupted: token ids [batch, pos] (corrupted: the counterfactual prompts, the source
        of resample ablation).
    pos_mask: bool [batch, pos], the positions a metric reads.
    metric: the task metric (ACDC's sign: lower is better for the model; 0 for the clean model
        where it compares with clean outputs).
    correct: long [batch, pos], the right answer's output index at scored positions (categorical
        outputs), or None for numerical outputs.
    wrong: long [batch, pos, n_wrong], the task's wrong answers (IOI: the subject; docstring: 13
        other arguments), or None.
    counterfactual: long [batch, pos], the corrupted prompt's right answer, or None.
    rows: further per-example tensors [batch, ...] that the metric reads (e.g. IOI's IO and S
        tokens); per example, not per position (`at_positions` keeps them whole).
    categorical: whether outputs are class scores (False: one numerical output per position).
    output_range: for numerical outputs, the range the output lives in.
    ablation: the source patched from: "resample" (the corrupted prompts) or "zero" (ACDC's
        zero ablation).
    loss: the task's ACDC loss metric (IOI logit difference, Greater-Than probability difference,
        Docstring's max-over-wrong logit difference), which the attribution objective "logit-diff"
        uses, negated (higher is better), in place of the answer logit difference; None: the answer
        logit difference (`harness.core.objectives.answer_logit_diff`).
    position_scramble: long [pos], a permutation of the positional embeddings in the resample
        source run (ACDC's tracr protocol, `harness.core.references.acdc_position_scramble`), or
        None for an unscrambled corrupted run. Shared by every example; unused under zero
        ablation.
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    pos_mask: torch.Tensor
    metric: Metric
    categorical: bool = True
    correct: Optional[torch.Tensor] = None
    wrong: Optional[torch.Tensor] = None
    counterfactual: Optional[torch.Tensor] = None
    rows: dict = field(default_factory=dict)
    output_range: tuple = (0.0, 1.0)
    ablation: str = "resample"
    position_scramble: Optional[torch.Tensor] = None
    loss: Optional[Metric] = None
    info: dict = field(default_factory=dict)

    PER_EXAMPLE = ("clean", "corrupted", "pos_mask", "correct", "wrong", "counterfactual")

    def __post_init__(self):
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} differ in shape")
        if self.pos_mask.shape != self.clean.shape:
            raise ValueError("pos_mask must have the shape of the tokens")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, not {self.ablation!r}")
        if not isinstance(self.metric, Metric):
            raise TypeError("TaskData.metric must be a harness.core.data.Metric (a function and the fields it reads)")
        for name, t in self.rows.items():
            if t.shape[0] != self.n:
                raise ValueError(f"rows[{name!r}] has {t.shape[0]} rows, the data has {self.n}")
        if self.position_scramble is not None and not torch.equal(
                self.position_scramble.sort().values, torch.arange(self.clean.shape[1])):
            raise ValueError(f"position_scramble must be a permutation of the {self.clean.shape[1]} positions")
        for kw, src in self.metric.reads.items():
            if src not in self.PER_EXAMPLE and src not in self.rows:
                raise ValueError(f"metric {self.metric.name!r} reads {src!r}, which is not a field of this data")

    @property
    def n(self) -> int:
        return self.clean.shape[0]

    @property
    def metric_name(self) -> str:
        return self.metric.name

    def field(self, name: str) -> torch.Tensor:
        return self.rows[name] if name in self.rows else getattr(self, name)

    def metric_values(self, logits: torch.Tensor, clean_logits: torch.Tensor, metric: Optional[Metric] = None) -> torch.Tensor:
        """[batch]: the task metric (or `metric`) of each example (see `Metric`)."""
        metric = metric or self.metric
        dev = logits.device
        kw = {k: self.field(src).to(dev) for k, src in metric.reads.items()}
        kw.update({k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in metric.const.items()})
        return metric.fn(logits, clean_logits, **kw)

    def subset(self, idx: torch.Tensor) -> "TaskData":
        """The same split restricted to examples `idx` (bootstrap resamples): every per-example
        field is re-indexed."""
        pick = {name: (None if getattr(self, name) is None else getattr(self, name)[idx]) for name in self.PER_EXAMPLE}
        return replace(self, **pick, rows={k: v[idx] for k, v in self.rows.items()}, info=dict(self.info))

    def scored_positions(self) -> torch.Tensor:
        """[n] long, sorted: the columns any metric of this data reads (those `pos_mask` marks in
        some example, and the last, which IOI, Greater-Than and Docstring's metrics index as -1)."""
        cols = self.pos_mask.any(0).clone()
        cols[-1] = True
        return torch.nonzero(cols.cpu()).flatten()

    def scored(self) -> tuple:
        """(cols, data at cols): `scored_positions` and `at_positions` of them, what a run that
        unembeds only the scored columns (`Engine.run(positions=cols)`) is scored with."""
        cols = self.scored_positions()
        return cols, self.at_positions(cols)

    def passes(self, chunk: Optional[int]) -> list:
        """[(examples, their share of the batch)] for passes of at most `chunk` examples in order;
        [(self, 1.0)] when `chunk` is None or covers the batch. Batch-mean quantities of the
        passes, weighted by their shares, add up to the batch's."""
        if not chunk or self.n <= chunk:
            return [(self, 1.0)]
        return [(self.subset(torch.arange(a, min(a + chunk, self.n))), min(chunk, self.n - a) / self.n)
                for a in range(0, self.n, chunk)]

    def at_positions(self, cols: torch.Tensor) -> "TaskData":
        """This data's per-position fields (tokens, pos_mask, correct, wrong, counterfactual) at
        columns `cols` only, so a metric can score logits unembedded there alone. The last of
        `cols` must be the last position. Per-example `rows` are kept whole (no task has a
        per-position row). Its tokens are not a prompt: score with it, never run a model on it."""
        cols = torch.as_tensor(cols, dtype=torch.long)
        if int(cols[-1]) != self.clean.shape[1] - 1:
            raise ValueError("the last scored column must be the last position (metrics read it as -1)")
        cut = lambda t: None if t is None else t[:, cols.to(t.device)]  # noqa: E731
        return replace(self, **{n: cut(getattr(self, n)) for n in self.PER_EXAMPLE}, position_scramble=None,
                       rows=dict(self.rows), info=dict(self.info))

    def with_ablation(self, ablation: str) -> "TaskData":
        return replace(self, ablation=ablation, info=dict(self.info))

    def to(self, device) -> "TaskData":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, **{n: move(getattr(self, n)) for n in self.PER_EXAMPLE},
                       rows={k: v.to(device) for k, v in self.rows.items()})


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation with no fixed points (n >= 2), by rejection."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 rows")
    while True:
        p = torch.randperm(n, generator=generator)
        if not (p == torch.arange(n)).any():
            return p
