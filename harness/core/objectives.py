"""Every objective and task metric, defined once, as pure functions of the logits, the reference
(clean) logits and the data's per-example fields.

Shapes: logits and clean_logits [batch, pos, d_vocab_out]; pos_mask and mask bool [batch, pos];
per-example answers as documented per function. Every function returns [batch], one value per
example, whose mean over the batch is the number the task reports.

Sign convention (ACDC's, docs/graph-and-patching.md#metric-conventions): a task metric is lower-is-better for
the model and 0 for the clean model wherever it compares with the clean outputs (`l2`, `kl`).
The answer logit difference (`answer_logit_diff`, Syed et al. 2023's attribution objective) has
the natural sign: higher is better.

`evaluate(name, ...)` is the one dispatcher: "metric" is the task's own metric (`TaskData.metric`),
"logit-diff" the task's ACDC loss metric with the natural sign (`TaskData.loss`; the answer logit
difference where a task has none), "answer-logit-diff" the answer logit difference. Methods, faithfulness, ACDC and the benchmarks all call
it, so an objective means the same thing everywhere.
"""
from __future__ import annotations

import torch

OBJECTIVES = {
    "metric": "the task's metric against the clean outputs (ACDC's sign: lower is better)",
    "logit-diff": "the task's ACDC loss metric, higher is better (IOI IO - S logit, Greater-Than P(>YY) - P(<=YY), "
                  "Docstring correct - max wrong logit); where a task has none, answer-logit-diff",
    "answer-logit-diff": "correct minus mean wrong answer logit at the scored positions (the output itself for numerical tasks)",
}


# ----- reductions over positions --------------------------------------------------------------------
def masked_mean(values: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """[batch, pos] -> [batch]: the mean over each example's scored positions."""
    m = pos_mask.to(values.device).to(values.dtype)
    return (values * m).sum(-1) / m.sum(-1).clamp(min=1)


def pooled_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, pos] -> [batch] whose batch mean is the mean over every masked position of the
    batch (ACDC's induction mean is over positions, not over examples)."""
    m = mask.to(values.device).to(values.dtype)
    return values.mul(m).sum(-1) * (values.shape[0] / m.sum().clamp(min=1))


def kl_divergence(log_p_ref: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(ref || p) over the last (vocabulary) dimension, from log-probabilities."""
    return (log_p_ref.exp() * (log_p_ref - log_p)).sum(-1)


# ----- task metrics (ACDC's sign) --------------------------------------------------------------------
def l2(logits, clean_logits, pos_mask):
    """tracr: mean squared difference to the clean outputs over output dims, at scored positions."""
    return masked_mean((logits - clean_logits).pow(2).mean(-1), pos_mask)


def kl(logits, clean_logits, pos_mask):
    """KL(clean || patched) at the scored positions, averaged per example."""
    return masked_mean(kl_divergence(clean_logits.log_softmax(-1), logits.log_softmax(-1)), pos_mask)


def kl_pooled(logits, clean_logits, mask):
    """KL(clean || patched), pooled over every masked position of the batch (induction)."""
    return pooled_mean(kl_divergence(clean_logits.log_softmax(-1), logits.log_softmax(-1)), mask)


def logit_diff(logits, clean_logits, correct, wrong):
    """IOI: -(logit[IO] - logit[S]) at the last position. correct [batch], wrong [batch]."""
    last = logits[:, -1]
    return -(last.gather(-1, correct[:, None]) - last.gather(-1, wrong[:, None])).squeeze(-1)


def prob_diff(logits, clean_logits, year_tokens, yy):
    """Greater-Than: -(sum_{y > YY} p_y - sum_{y <= YY} p_y), p the last position's softmax read
    at the 100 two-digit tokens (mass elsewhere ignored). year_tokens [100], yy [batch]."""
    p = logits[:, -1].softmax(-1)[:, year_tokens]  # [batch, 100]
    le = torch.arange(100, device=logits.device)[None, :] <= yy[:, None]
    return -((p * ~le).sum(-1) - (p * le).sum(-1))


def docstring_metric(logits, clean_logits, correct, wrong):
    """Docstring: -(logit[correct] - max_j logit[wrong_j]) at the last position.
    correct [batch], wrong [batch, 13]."""
    last = logits[:, -1]
    return -(last.gather(-1, correct[:, None]).squeeze(-1) - last.gather(-1, wrong).max(-1).values)


def nll(logits, clean_logits, labels, mask):
    """Induction: -log p(label) at the masked positions, pooled. labels [batch, pos]."""
    lp = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return pooled_mean(-lp, mask)


def neg_answer_logit_diff(logits, clean_logits, pos_mask, correct, wrong, categorical=True):
    """-answer_logit_diff: a task metric with ACDC's sign built from the answers (random data)."""
    return -answer_logit_diff(logits, pos_mask, correct, wrong, categorical)


# ----- the attribution objective ---------------------------------------------------------------------
def answer_logit_diff(logits, pos_mask, correct, wrong, categorical=True):
    """Mean over scored positions of (correct - mean wrong) logit; for a numerical output
    (categorical False) the output itself. correct [batch, pos], wrong [batch, pos, n_wrong]."""
    if categorical:
        c = logits.gather(-1, correct.to(logits.device).clamp(min=0).unsqueeze(-1)).squeeze(-1)
        w = logits.gather(-1, wrong.to(logits.device).clamp(min=0)).mean(-1)
        val = c - w
    else:
        val = logits[..., 0]
    m = pos_mask.to(logits.device)
    return (val * m).sum(-1) / m.sum(-1).clamp(min=1)


def evaluate(name: str, logits: torch.Tensor, clean_logits: torch.Tensor, data) -> torch.Tensor:
    """[batch]: objective `name` ("metric" or "logit-diff", see OBJECTIVES) of `data`'s examples."""
    if name == "metric":
        return data.metric_values(logits, clean_logits)
    if name == "logit-diff" and data.loss is not None:
        return -data.metric_values(logits, clean_logits, data.loss)
    if name in ("logit-diff", "answer-logit-diff"):
        return answer_logit_diff(logits, data.pos_mask, data.correct, data.wrong, data.categorical)
    raise KeyError(f"unknown objective {name!r}; objectives: {', '.join(OBJECTIVES)}")
