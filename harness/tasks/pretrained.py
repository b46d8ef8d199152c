"""Shared machinery of ACDC's four pretrained-model tasks: availability, loading, tokenising.

Their metrics are in `harness.core.objectives` (`logit_diff`, `prob_diff`, `docstring_metric`,
`nll`, `kl`, `kl_pooled`), following acdc/acdc_utils.py and the task utils of ACDC's repository
(docs/graph-and-patching.md#acdc-algorithm, docs/tasks.md#ioi-metrics, docs/tasks.md#greater-than-metrics, docs/tasks.md#docstring-metrics, docs/tasks.md#induction-metrics), with ACDC's sign: lower is better for the model.
The per-example tensors they read (answers, masks) are fields of the task data, so subsetting
the data subsets the metric too.
"""
from __future__ import annotations

from typing import Optional

import torch

from harness.core import loading
from harness.core.data import check_split
from harness.tasks.base import Task


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
    prompt_tokens: Optional[int] = None  # prompts tokenise to exactly this many (ACDC's data on GPT-2); None: any one length
    on_model: bool = False  # run on another model than ACDC's (harness.tasks.on_model): its BOS, single-token checks
    n_per_split: int = 100
    metrics: dict = {}  # name -> harness.core.data.Metric; the first is the default ("Loss" metric)

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

    def encode_prompt(self, tokenizer, text: str) -> list:
        """A whole prompt's token ids: as ACDC's data on GPT-2 (no BOS), or, on another model,
        with the BOS its tokenizer adds by default (as the model is run)."""
        ids = encode(tokenizer, text)
        if self.on_model:
            bos = getattr(tokenizer, "bos_token_id", None)
            try:
                adds = bos is not None and list(tokenizer("x")["input_ids"][:1]) == [bos]
            except Exception:  # a tokenizer without __call__ (tests' fakes)
                adds = False
            ids = [bos] + ids if adds else ids
        return ids

    def one_token(self, tokenizer, text: str, what: str) -> int:
        """The single token of `text` (an answer); on another model a text of several tokens is a
        clear error (the metrics read one logit per answer)."""
        ids = encode(tokenizer, text)
        if len(ids) != 1 and (self.on_model or not ids):
            raise ValueError(f"{self.name}: {what} {text!r} is {len(ids)} tokens in {self.model}'s tokenizer; this task "
                             "reads one logit per answer, so its answers must be single tokens")
        return ids[0]

    def check_length(self, rows: torch.Tensor, what: str) -> None:
        if self.prompt_tokens is not None and rows.shape[1] != self.prompt_tokens:
            raise ValueError(f"{self.name}: expected {self.prompt_tokens} tokens per prompt (ACDC asserts it), "
                             f"got {rows.shape[1]} ({what})")

    def split_rows(self, split: str) -> slice:
        check_split(split)
        n = self.n_per_split
        return slice(0, n) if split == "validation" else slice(n, 2 * n)

    def check_metric(self, metric: Optional[str]) -> str:
        metric = metric or next(iter(self.metrics))
        if metric not in self.metrics:
            raise ValueError(f"{self.name}: unknown metric {metric!r}; metrics: {', '.join(self.metrics)}")
        return metric


def last_position_answers(clean: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor, counterfactual: torch.Tensor):
    """Answers read at the last position, laid out as `TaskData` fields: (pos_mask [B, P],
    correct [B, P], wrong [B, P, n_wrong], counterfactual [B, P]), zero elsewhere. correct and
    counterfactual are [B]; wrong is [B] or [B, n_wrong]."""
    B, P = clean.shape
    wrong = wrong.reshape(B, -1)
    pos_mask = torch.zeros(B, P, dtype=torch.bool)
    pos_mask[:, -1] = True
    out_correct, out_cf = torch.zeros(B, P, dtype=torch.long), torch.zeros(B, P, dtype=torch.long)
    out_wrong = torch.zeros(B, P, wrong.shape[1], dtype=torch.long)
    out_correct[:, -1], out_wrong[:, -1], out_cf[:, -1] = correct, wrong, counterfactual
    return pos_mask, out_correct, out_wrong, out_cf


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
