"""What "maximally wrong" can mean: losses between the model's prediction and a wrong target.

Each target is a differentiable loss of the logits [batch, pos, vocab] read at the task's scored
positions; its gradient at the clean input is what `grad-wrong` scores. For tasks with one
numerical output per position (tracr-xproportion) every target is the squared distance to a
wrong value in the output's range, as documented per target.
"""
from __future__ import annotations

import math

import torch

from harness.core.data import TaskData
from harness.core.objectives import kl_divergence, masked_mean

TARGETS = {
    "logit-diff-mse": "the seed's: MSE pulling the correct and the wrong answer's logits together "
    "(numerical output: towards the corrupted prompt's output)",
    "least-likely": "cross-entropy towards the clean model's least likely token "
    "(numerical: towards the end of the output range farthest from the clean output)",
    "inverted": "KL(softmax(-clean logits) || model) (numerical: towards lo + hi - clean output)",
    "uniform": "KL(uniform || model) (numerical: towards the middle of the output range)",
    "counterfactual": "cross-entropy towards the corrupted prompt's answer (numerical: its output)",
    "task-metric": "the task's own metric (zero gradient at the clean point when it compares with clean outputs)",
}


def needs_source_logits(name: str, data: TaskData) -> bool:
    """Whether target `name` reads the source run's logits on `data` (`target_loss`)."""
    if name == "counterfactual":
        return not data.categorical or data.counterfactual is None
    return name == "logit-diff-mse" and not data.categorical


def target_loss(name: str, logits: torch.Tensor, data: TaskData, clean_logits: torch.Tensor, source_logits: torch.Tensor) -> torch.Tensor:
    """Scalar loss, mean over examples; minimising it moves the model towards the wrong target.
    logits, clean_logits, source_logits: [batch, pos, d_vocab_out] (source: the run patched from,
    `harness.core.references`)."""
    if name not in TARGETS:
        raise KeyError(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    m = data.pos_mask.to(logits.device)
    if name == "task-metric":
        return data.metric_values(logits, clean_logits).mean()
    if not data.categorical:
        y, yc = logits[..., 0], clean_logits[..., 0].detach()
        lo, hi = data.output_range
        mid = (lo + hi) / 2
        if name in ("logit-diff-mse", "counterfactual"):
            tgt = source_logits[..., 0].detach()
        elif name == "least-likely":
            tgt = torch.where(yc > mid, torch.full_like(yc, lo), torch.full_like(yc, hi))
        elif name == "inverted":
            tgt = lo + hi - yc
        else:  # uniform
            tgt = torch.full_like(yc, mid)
        return masked_mean((y - tgt).pow(2), m).mean()
    lp = logits.log_softmax(-1)
    if name == "logit-diff-mse":
        c = logits.gather(-1, data.correct.to(logits.device).unsqueeze(-1)).squeeze(-1)
        w = logits.gather(-1, data.wrong.to(logits.device)[..., :1]).squeeze(-1)
        per_pos = (c - w).pow(2)
    elif name == "least-likely":
        tgt = clean_logits.detach().argmin(-1)
        per_pos = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    elif name == "counterfactual":
        tgt = data.counterfactual if data.counterfactual is not None else source_logits.detach().argmax(-1)
        per_pos = -lp.gather(-1, tgt.to(logits.device).unsqueeze(-1)).squeeze(-1)
    elif name == "inverted":
        per_pos = kl_divergence((-clean_logits.detach()).log_softmax(-1), lp)
    else:  # uniform: KL(uniform || model) in closed form, sum_v (1/V) (log(1/V) - lp_v)
        V = logits.shape[-1]
        per_pos = (-math.log(V) - lp).mean(-1)
    return masked_mean(per_pos, m).mean()
