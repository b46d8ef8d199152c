"""Shared machinery of ACDC's four pretrained-model tasks: metrics, row-aware data, loading.

Metrics follow acdc/acdc_utils.py and the task utils of [ACDC-repo] (acdc-tasks.md §1.3, §2.3,
§3.3, §4.3, §5.3) with ACDC's sign: lower is better for the model. Each returns one value per
example whose mean over the batch is ACDC's number:
- `logit_diff` (IOI): -(logit[IO] - logit[S]) at the last position;
- `prob_diff` (Greater-Than): -(P(year > YY) - P(year <= YY)) over the 100 tokens "00".."99";
- `docstring_metric`: -(logit[correct] - max over the 13 wrong tokens of logit[wrong]);
- `nll` (Induction): -log p(next token) at the masked positions, pooled over all masked
  positions of the batch (ACDC's mean is over positions, not over examples);
- `kl` (every task): KL(clean || patched) at the scored positions (pooled like `nll`).
The natural sign (the quantity the original papers report) is minus these, except nll and KL.

A metric closes over per-example tensors (answers, masks), so `PretrainedData.subset` re-indexes
them along with the tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from harness.core import loading
from harness.tasks.base import Task, TaskData, kl_clean_patched

SPLITS = ("validation", "test")


# ----- metrics (ACDC's sign) -----------------------------------------------------------------------


def logit_diff(logits, clean_logits, correct, wrong):
    """IOI: -(logit[IO] - logit[S]) at the last position. correct [B], wrong [B]."""
    last = logits[:, -1]
    return -(last.gather(-1, correct[:, None]) - last.gather(-1, wrong[:, None])).squeeze(-1)


def prob_diff(logits, clean_logits, year_tokens, yy):
    """Greater-Than: -(sum_{y > YY} p_y - sum_{y <= YY} p_y), p = softmax of the last position
    restricted to the 100 two-digit tokens (mass elsewhere ignored). year_tokens [100], yy [B]."""
    p = logits[:, -1].softmax(-1)[:, year_tokens]  # [B, 100]
    le = torch.arange(100, device=logits.device)[None, :] <= yy[:, None]
    return -((p * ~le).sum(-1) - (p * le).sum(-1))


def docstring_metric(logits, clean_logits, correct, wrong):
    """Docstring: -(logit[correct] - max_j logit[wrong_j]) at the last position.
    correct [B], wrong [B, 13]."""
    last = logits[:, -1]
    return -(last.gather(-1, correct[:, None]).squeeze(-1) - last.gather(-1, wrong).max(-1).values)


def _pooled(values, mask):
    """[B, P] values -> [B] whose batch mean is the mean over every masked position of the batch."""
    m = mask.to(values.dtype)
    return values.mul(m).sum(-1) * (values.shape[0] / m.sum().clamp(min=1))


def nll(logits, clean_logits, labels, mask):
    """Induction: -log p(labels) at masked positions, pooled. labels [B, P], mask [B, P]."""
    lp = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return _pooled(-lp, mask)


def kl_pooled(logits, clean_logits, mask):
    """KL(clean || patched) summed over the vocabulary, pooled over masked positions."""
    lp, lc = logits.log_softmax(-1), clean_logits.log_softmax(-1)
    return _pooled((lc.exp() * (lc - lp)).sum(-1), mask)


def kl_last(logits, clean_logits, pos_mask):
    """KL at the scored position(s), per example (one position per example: same as pooled)."""
    return kl_clean_patched(logits, clean_logits, pos_mask)


class RowMetric:
    """`fn(logits, clean_logits, **rows, **const)`: `rows` hold one entry per example and follow
    `subset`; `const` (e.g. the 100 year tokens) does not."""

    def __init__(self, fn: Callable, rows: dict, const: Optional[dict] = None):
        self.fn, self.rows, self.const = fn, rows, dict(const or {})

    def __call__(self, logits, clean_logits):
        kw = {k: v.to(logits.device) for k, v in {**self.rows, **self.const}.items()}
        return self.fn(logits, clean_logits, **kw)

    def subset(self, idx) -> "RowMetric":
        return RowMetric(self.fn, {k: v[idx] for k, v in self.rows.items()}, self.const)


@dataclasses.dataclass
class PretrainedData(TaskData):
    """TaskData whose metric's per-example tensors are re-indexed by `subset`."""

    def subset(self, idx) -> "PretrainedData":
        d = super().subset(idx)
        fields = {f.name: getattr(d, f.name) for f in dataclasses.fields(TaskData)}
        if hasattr(self.metric, "subset"):
            fields["metric"] = self.metric.subset(idx)
        return PretrainedData(**fields)


# ----- tasks ---------------------------------------------------------------------------------------


class _AvailabilityMeta(type):
    """`cls.offline` is computed (cheaply: files on disk) so `circuit-bench list` and the
    runner's default task list see whether the model, tokenizer and data are here."""

    @property
    def offline(cls) -> bool:
        return all(loading.available(k) for k in cls.requires)


class PretrainedTask(Task, metaclass=_AvailabilityMeta):
    """A task on a pretrained model. Construct with `tokenizer=` (and, for induction, `tokens=`)
    to build data without any files (tests); otherwise they come from `weights_dir` or the hub
    cache (see harness.loading)."""

    requires: tuple = ()  # loading.SOURCES keys needed to run
    tokenizer_key: Optional[str] = None
    n_per_split: int = 100
    metric_names: tuple = ("kl",)  # the first is the default ("Loss" metric)

    def __init__(self, tokenizer=None, weights_dir=None):
        self._tokenizer = tokenizer
        self.weights_dir = weights_dir
        self._cache = None

    @property
    def offline(self) -> bool:
        return type(self).offline

    def load_model(self, device="cpu", dtype=torch.float32, weights_dir=None):
        if weights_dir is not None:
            self.weights_dir = weights_dir
        return loading.load_weights(self.model, self.weights_dir, device=device, dtype=dtype)

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = loading.load_tokenizer(self.tokenizer_key, self.weights_dir)
        return self._tokenizer

    def split_rows(self, split: str) -> slice:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
        n = self.n_per_split
        return slice(0, n) if split == "validation" else slice(n, 2 * n)

    def check_metric(self, metric: Optional[str]) -> str:
        metric = metric or self.metric_names[0]
        if metric not in self.metric_names:
            raise ValueError(f"{self.name}: unknown metric {metric!r}; metrics: {', '.join(self.metric_names)}")
        return metric


def encode(tokenizer, text: str) -> list:
    """Token ids of `text` with no special tokens added (BOS is added explicitly where ACDC does)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))


def stack_equal(rows: list, what: str) -> torch.Tensor:
    """ACDC stacks prompts and so requires one length; say which prompt breaks it."""
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        first = len(rows[0])
        bad = next(i for i, r in enumerate(rows) if len(r) != first)
        raise ValueError(f"{what}: prompts tokenise to different lengths {sorted(lengths)} (row {bad}); "
                         "ACDC requires one length (is this the right tokenizer?)")
    return torch.tensor(rows, dtype=torch.long)
