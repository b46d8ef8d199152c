"""What "maximally wrong" can mean: losses between the model's prediction and a wrong target.

Each target is a differentiable loss of the logits [batch, pos, vocab] read at the task's scored
positions; its gradient at the clean input is what `grad-wrong` scores. For tasks with one
numerical output per position (tracr-xproportion) every target is the squared distance to a
wrong value in the output's range, as documented per target.

Targets are registered (`register_target`), so a new definition of "maximally wrong" is one
function: `grad-wrong` gains `<name>/<site>` for every gradient site, in the CLI and results.csv,
without editing this package (from a `--plugin` module or an installed package's entry point).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch

from harness.core.data import TaskData
from harness.core.objectives import kl_divergence, masked_mean


@dataclass(frozen=True)
class Target:
    """A registered target. loss(logits, data, clean_logits, source_logits) -> scalar, the mean
    over examples (logits: [batch, pos, d_vocab_out]; source_logits is None unless `reads_source`
    says the loss reads it); reads_source: bool, or data -> bool; default: whether its activation
    site runs when grad-wrong's variants are not named."""

    name: str
    description: str
    loss: Callable
    reads_source: Union[bool, Callable] = False
    default: bool = True

    def needs_source(self, data: TaskData) -> bool:
        return bool(self.reads_source(data) if callable(self.reads_source) else self.reads_source)


TARGETS: dict[str, Target] = {}
_LISTENERS: list = []  # called with each Target as it registers (grad-wrong adds its variants)


def register_target(name: str, description: str, *, reads_source=False, default: bool = True):
    """Decorator: register `loss(logits, data, clean_logits, source_logits) -> scalar` as target
    `name`. Minimising the loss moves the model towards the wrong answer; clean_logits and
    source_logits must be treated as constants (detach them)."""
    if "/" in name or not name:
        raise ValueError(f"a target name must be non-empty and without '/', not {name!r}")

    def deco(loss):
        if name in TARGETS:
            raise ValueError(f"target {name!r} is already registered")
        target = Target(name, description, loss, reads_source, default)
        TARGETS[name] = target
        for listener in _LISTENERS:
            listener(target)
        return loss

    return deco


def on_register(listener: Callable) -> None:
    """Call `listener(target)` for every target registered so far and every later one."""
    _LISTENERS.append(listener)
    for target in list(TARGETS.values()):
        listener(target)


def needs_source_logits(name: str, data: TaskData) -> bool:
    """Whether target `name` reads the source run's logits on `data` (`target_loss`)."""
    return _get(name).needs_source(data)


def target_loss(name: str, logits: torch.Tensor, data: TaskData, clean_logits: torch.Tensor, source_logits: torch.Tensor) -> torch.Tensor:
    """Scalar loss, mean over examples; minimising it moves the model towards the wrong target.
    logits, clean_logits, source_logits: [batch, pos, d_vocab_out] (source: the run patched from,
    `harness.core.references`)."""
    target = _get(name)
    return target.loss(logits, data, clean_logits, _Undeclared(name) if source_logits is None else source_logits)


class _Undeclared:
    """Given for source_logits when the caller made no source run (the target did not declare
    `reads_source` for this data): reading it says how to fix the registration."""

    def __init__(self, name):
        self._name = name

    def _fail(self, *_a, **_k):
        raise TypeError(f"target {self._name!r} read source_logits but did not declare it: register it with "
                        f"reads_source=True (or a function of the data saying when)")

    __getitem__ = __getattr__ = __torch_function__ = _fail


def _get(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; targets: {', '.join(TARGETS)}") from None


def _numerical(logits, data, target_of):
    """Squared distance of the one numerical output to `target_of(clean output, lo, hi)`, mean
    over scored positions, then examples."""
    y = logits[..., 0]
    return masked_mean((y - target_of(*data.output_range)).pow(2), data.pos_mask.to(logits.device)).mean()


def _mean_scored(per_pos, data):
    return masked_mean(per_pos, data.pos_mask.to(per_pos.device)).mean()


@register_target("logit-diff-mse", "the seed's: MSE pulling the correct and the wrong answer's logits together "
                 "(numerical output: towards the corrupted prompt's output)",
                 reads_source=lambda data: not data.categorical)
def logit_diff_mse(logits, data, clean_logits, source_logits):
    if not data.categorical:
        return _numerical(logits, data, lambda lo, hi: source_logits[..., 0].detach())
    c = logits.gather(-1, data.correct.to(logits.device).unsqueeze(-1)).squeeze(-1)
    w = logits.gather(-1, data.wrong.to(logits.device)[..., :1]).squeeze(-1)
    return _mean_scored((c - w).pow(2), data)


@register_target("least-likely", "cross-entropy towards the clean model's least likely token "
                 "(numerical: towards the end of the output range farthest from the clean output)")
def least_likely(logits, data, clean_logits, source_logits):
    if not data.categorical:
        yc = clean_logits[..., 0].detach()
        return _numerical(logits, data, lambda lo, hi: torch.where(yc > (lo + hi) / 2, torch.full_like(yc, lo),
                                                                    torch.full_like(yc, hi)))
    tgt = clean_logits.detach().argmin(-1)
    return _mean_scored(-logits.log_softmax(-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1), data)


@register_target("inverted", "KL(softmax(-clean logits) || model) (numerical: towards lo + hi - clean output)")
def inverted(logits, data, clean_logits, source_logits):
    if not data.categorical:
        return _numerical(logits, data, lambda lo, hi: lo + hi - clean_logits[..., 0].detach())
    return _mean_scored(kl_divergence((-clean_logits.detach()).log_softmax(-1), logits.log_softmax(-1)), data)


@register_target("uniform", "KL(uniform || model) (numerical: towards the middle of the output range)")
def uniform(logits, data, clean_logits, source_logits):
    if not data.categorical:
        yc = clean_logits[..., 0]
        return _numerical(logits, data, lambda lo, hi: torch.full_like(yc, (lo + hi) / 2))
    # KL(uniform || model) in closed form, sum_v (1/V) (log(1/V) - lp_v)
    return _mean_scored((-math.log(logits.shape[-1]) - logits.log_softmax(-1)).mean(-1), data)


@register_target("counterfactual", "cross-entropy towards the corrupted prompt's answer (numerical: its output)",
                 reads_source=lambda data: not data.categorical or data.counterfactual is None)
def counterfactual(logits, data, clean_logits, source_logits):
    if not data.categorical:
        return _numerical(logits, data, lambda lo, hi: source_logits[..., 0].detach())
    tgt = data.counterfactual if data.counterfactual is not None else source_logits.detach().argmax(-1)
    return _mean_scored(-logits.log_softmax(-1).gather(-1, tgt.to(logits.device).unsqueeze(-1)).squeeze(-1), data)


@register_target("task-metric", "the task's own metric (zero gradient at the clean point when it compares with clean outputs)")
def task_metric(logits, data, clean_logits, source_logits):
    return data.metric_values(logits, clean_logits).mean()
