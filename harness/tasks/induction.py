"""Induction on redwood_attn_2l, with ACDC's data (docs/tasks.md#induction; acdc/induction/utils.py in
[ACDC-repo]).

Token data: `validation_data.pt` (pre-tokenised OpenWebText validation sequences, GPT-2 ids)
and `mask_repeat_candidates.pkl` (True where the next token completes an A B ... A B
induction pattern), both in the Hugging Face repo ArthurConmy/redwood_attn_2l beside the
weights. They are read from the hub cache or `--weights-dir DIR/redwood_attn_2l/`, like the
model (see harness.loading; `hf download ArthurConmy/redwood_attn_2l validation_data.pt
mask_repeat_candidates.pkl`), or passed in as `Induction(tokens=..., mask=...)`.
Inputs `data[:, :300]`, labels `data[:, 1:301]`, mask `mask[:, :300]`; validation rows 0-49,
test rows 50-99; corrupted = the split's rows shuffled by `torch.manual_seed(42); randperm`
(ACDC's shuffle_tensor; fixed points possible; the same seed for both splits).
Metric: nll at the masked positions ("Loss"), or KL there. No ground truth exists (ACDC
computes no ROC for induction): methods still run and report scores, without an AUC.
Answers: correct = the next token; wrong = the corrupted row's next token where it differs,
else the current token, else another id of the data; counterfactual = the corrupted row's next
token.
"""
from __future__ import annotations

from typing import Optional

import torch

from harness.core import loading
from harness.core import objectives
from harness.core.data import Metric, TaskData, log_thresholds
from harness.tasks.pretrained import PretrainedTask
from harness.tasks import register_task

SWEEP = log_thresholds(-4, 0, 21)  # ACDC's sweep for both metrics (experiments/launch_spreadsheet.py)

SEQ_LEN = 300
SHUFFLE_SEED = 42


@register_task
class Induction(PretrainedTask):
    name = "induction"
    has_ground_truth = False  # ACDC defines no induction circuit
    model = "redwood_attn_2l"
    description = "Induction on redwood_attn_2l (ACDC: 300-token OpenWebText rows, masked positions, 50+50; no ground truth)"
    requires = ("redwood_attn_2l", "induction-data")
    n_per_split = 50
    metrics = {
        "nll": Metric("nll", objectives.nll, {"labels": "correct", "mask": "pos_mask"}, acdc_thresholds=SWEEP),
        "kl": Metric("kl", objectives.kl_pooled, {"mask": "pos_mask"}, acdc_thresholds=SWEEP),
    }
    seq_len = SEQ_LEN

    def __init__(self, tokenizer=None, weights_dir=None, tokens: Optional[torch.Tensor] = None,
                 mask: Optional[torch.Tensor] = None):
        super().__init__(tokenizer, weights_dir)
        self._given = None if tokens is None else (tokens.long(), mask.bool())

    def raw(self) -> tuple:
        """(tokens, mask) as stored: [n_rows, >= 301]."""
        if self._given is None:
            self._given = loading.load_induction_data(self.weights_dir)
        toks, mask = self._given
        if toks.shape != mask.shape:
            raise ValueError(f"induction: tokens {tuple(toks.shape)} and mask {tuple(mask.shape)} differ in shape")
        if toks.shape[1] < self.seq_len + 1 or toks.shape[0] < 2 * self.n_per_split:
            raise ValueError(f"induction: need >= {2 * self.n_per_split} rows of >= {self.seq_len + 1} tokens, "
                             f"got {tuple(toks.shape)}")
        return toks, mask

    def data(self, split="validation", seed=0, ablation="resample", metric=None) -> TaskData:
        """ACDC's fixed data (the same for every `seed`); metric "nll" (default) or "kl"."""
        metric = self.check_metric(metric)
        toks, mask = self.raw()
        rows, L = self.split_rows(split), self.seq_len
        clean = toks[rows, :L].contiguous()
        labels = toks[rows, 1 : L + 1].contiguous()
        pos_mask = mask[rows, :L].contiguous()
        perm = torch.randperm(clean.shape[0], generator=torch.Generator().manual_seed(SHUFFLE_SEED))
        corr, cf = clean[perm], labels[perm]
        # a wrong answer that always differs from the right one and is a token id of the data
        fallback = torch.where(clean != labels, clean, (labels + 1) % (int(toks.max()) + 1))
        wrong = torch.where(cf != labels, cf, fallback).unsqueeze(-1)
        return TaskData(
            clean=clean, corrupted=corr, pos_mask=pos_mask, metric=self.metrics[metric], categorical=True,
            correct=labels, wrong=wrong, counterfactual=cf, ablation=ablation,
            info={"split": split, "n": int(clean.shape[0]), "masked_positions": int(pos_mask.sum()),
                  "natural_metric": "negative log-probability (lower is better)" if metric == "nll" else "KL",
                  "ground_truth": "none: ACDC defines no induction circuit, so no AUC"},
        )
