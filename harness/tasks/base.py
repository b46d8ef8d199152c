"""What a task is: data for a split, its metric, its model and its ground truth.

A task never runs a model. `TaskData` carries tokens and the small functions (metric, answer
logits) that methods differentiate; `Task` says how to get the model and the data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

SPLITS = ("validation", "test")


@dataclass
class TaskData:
    """One split of a task.

    clean, corrupted: token ids [batch, pos] (corrupted: the counterfactual prompts).
    pos_mask: bool [batch, pos], the positions a metric reads.
    correct: long [batch, pos], the right answer's output index at scored positions (categorical
        outputs), or None for numerical outputs.
    wrong: long [batch, pos, n_wrong], the task's wrong answers (IOI: the subject; docstring: 13
        other arguments), or None.
    counterfactual: long [batch, pos], the corrupted prompt's right answer, or None.
    metric: (logits, clean_logits) -> [batch], the task metric with ACDC's sign (lower is
        better for the model; 0 for the clean model where it compares with clean outputs).
    categorical: whether outputs are class scores (False: one numerical output per position).
    output_range: for numerical outputs, the range the output lives in.
    ablation: "resample" (patch from `corrupted`) or "zero" (ACDC's zero ablation).
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    pos_mask: torch.Tensor
    metric: Callable
    categorical: bool = True
    correct: Optional[torch.Tensor] = None
    wrong: Optional[torch.Tensor] = None
    counterfactual: Optional[torch.Tensor] = None
    output_range: tuple = (0.0, 1.0)
    ablation: str = "resample"
    metric_name: str = "metric"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} differ in shape")
        if self.pos_mask.shape != self.clean.shape:
            raise ValueError("pos_mask must have the shape of the tokens")
        if self.ablation not in ("resample", "zero"):
            raise ValueError(f"ablation must be 'resample' or 'zero', not {self.ablation!r}")

    @property
    def n(self) -> int:
        return self.clean.shape[0]

    def subset(self, idx: torch.Tensor) -> "TaskData":
        """The same split restricted to examples `idx` (used for bootstrap resamples)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return TaskData(
            clean=self.clean[idx], corrupted=self.corrupted[idx], pos_mask=self.pos_mask[idx], metric=self.metric,
            categorical=self.categorical, correct=pick(self.correct), wrong=pick(self.wrong),
            counterfactual=pick(self.counterfactual), output_range=self.output_range, ablation=self.ablation,
            metric_name=self.metric_name, info=dict(self.info),
        )

    def with_ablation(self, ablation: str) -> "TaskData":
        d = self.subset(torch.arange(self.n))
        d.ablation = ablation
        return d

    def answer_logit_diff(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch]: mean over scored positions of (correct - mean wrong) logit, or, for a
        numerical output, the output itself. The usual attribution objective (Syed et al.)."""
        m = self.pos_mask.to(logits.device)
        if self.categorical:
            c = logits.gather(-1, self.correct.to(logits.device).clamp(min=0).unsqueeze(-1)).squeeze(-1)
            w = logits.gather(-1, self.wrong.to(logits.device).clamp(min=0)).mean(-1)
            val = c - w
        else:
            val = logits[..., 0]
        return (val * m).sum(-1) / m.sum(-1).clamp(min=1)


def masked_mean(values: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """[batch, pos] -> [batch]: mean over the scored positions of each example."""
    m = pos_mask.to(values.device).to(values.dtype)
    return (values * m).sum(-1) / m.sum(-1).clamp(min=1)


def kl_clean_patched(logits: torch.Tensor, clean_logits: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """ACDC's KL(clean || patched) summed over the vocabulary, averaged over scored positions."""
    lp = logits.log_softmax(-1)
    lc = clean_logits.log_softmax(-1)
    kl = (lc.exp() * (lc - lp)).sum(-1)
    return masked_mean(kl, pos_mask)


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation with no fixed points (n >= 2), by rejection."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 rows")
    while True:
        p = torch.randperm(n, generator=generator)
        if not (p == torch.arange(n)).any():
            return p


class Task:
    """Base class. Subclasses set the class attributes and implement `load_model` and `data`."""

    name: str = ""
    model: str = ""  # architecture / model id
    description: str = ""
    offline: bool = True
    mirrors: Optional[str] = None  # for analogues: the ACDC task this one mirrors
    supports_kl: bool = True

    def load_model(self, device="cpu", dtype=torch.float32, weights_dir=None):
        raise NotImplementedError

    def data(self, split: str = "validation", seed: int = 0, ablation: str = "resample") -> TaskData:
        raise NotImplementedError

    def ground_truths(self) -> dict:
        """variant name -> GroundTruth (see harness.ground_truth)."""
        from harness.core.ground_truth import ground_truths_for

        return ground_truths_for(self.name)

    def summary(self) -> dict:
        gts = self.ground_truths()
        return {
            "name": self.name,
            "model": self.model,
            "offline": self.offline,
            "description": self.description,
            "mirrors": self.mirrors,
            "n_ground_truth_edges": {k: int(v.n_edges) for k, v in gts.items()},
        }
