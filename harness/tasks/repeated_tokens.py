"""Repeated random tokens: the induction-style task that runs on any causal LM (docs/tasks.md#repeated-tokens).

Each prompt is a random sequence of T tokens followed by the same T tokens again (after the BOS
the model's tokenizer adds by default, if any). From the second copy's first token on, the next
token is predictable only by looking back at what followed the same token in the first copy:
what induction heads do (Olsson et al. 2022, the repeated-random-tokens test). Clean: the
repeat. Corrupted: the same second copy after a different random first copy, so nothing in it
can be copied. Scored: the second copy's positions, each predicting the next token of the
repeat (T - 1 positions). Metric: the negative log-probability of that token there, pooled
(ACDC's induction "Loss"), or KL to the clean model. Answers: correct = the repeated next
token, wrong and counterfactual = the corrupted prompt's next token there (as induction's).

Tokens are drawn, seeded, from the tokenizer's ordinary vocabulary (ids below the model's
vocabulary that decode to non-empty text and are not special tokens); the data depend only on
the tokenizer. No circuit is stored for any model: scores and faithfulness, no AUC.
"""
from __future__ import annotations

import torch

from harness.core import objectives
from harness.core.data import Metric, TaskData, log_thresholds
from harness.tasks import register_task
from harness.tasks.pretrained import PretrainedTask

HALF = 10  # T: tokens per copy
ROWS_SEED = 1234


def ordinary_ids(tokenizer, limit: int) -> torch.Tensor:
    """Token ids < limit that are not special tokens and decode to non-blank text."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    n = min(limit, len(tokenizer))
    ok = [i for i in range(n) if i not in special and tokenizer.decode([i]).strip()]
    return torch.tensor(ok, dtype=torch.long)


@register_task
class RepeatedTokens(PretrainedTask):
    name = "repeated-tokens"
    model = "gpt2"
    description = ("repeated random tokens on GPT-2 small (induction-style: T random tokens twice, the second copy "
                   "scored; 100+100; no ground truth)")
    requires = ("gpt2", "gpt2-tokenizer")
    tokenizer_key = "gpt2-tokenizer"
    has_ground_truth = False
    in_default_run = False
    n_per_split = 100
    half = HALF
    metrics = {
        "nll": Metric("nll", objectives.nll, {"labels": "correct", "mask": "pos_mask"}, acdc_thresholds=log_thresholds(-4, 0, 21)),
        "kl": Metric("kl", objectives.kl_pooled, {"mask": "pos_mask"}, acdc_thresholds=log_thresholds(-4, 0, 21)),
    }

    def tokens(self) -> dict:
        """[2 n_per_split, (BOS) + 2T] clean and corrupted ids, seeded by ROWS_SEED."""
        if self._cache is None:
            tok = self.tokenizer()
            pool = ordinary_ids(tok, getattr(tok, "vocab_size", None) or len(tok))
            if len(pool) < 4 * self.half:
                raise ValueError(f"{self.name}: the tokenizer has only {len(pool)} ordinary tokens")
            g = torch.Generator().manual_seed(ROWS_SEED)
            n = 2 * self.n_per_split
            first = pool[torch.randint(0, len(pool), (n, self.half), generator=g)]
            other = pool[torch.randint(0, len(pool), (n, self.half), generator=g)]
            prefix = self.encode_prompt(tok, "")  # the BOS the model's tokenizer adds, if any
            pre = torch.tensor(prefix, dtype=torch.long).expand(n, len(prefix))
            self._cache = {"clean": torch.cat([pre, first, first], 1), "corrupted": torch.cat([pre, other, first], 1),
                           "start": len(prefix) + self.half}
        return self._cache

    def data(self, split="validation", seed=0, ablation="resample", metric=None) -> TaskData:
        """Fixed data (the same for every `seed`); metric "nll" (default) or "kl"."""
        metric = self.check_metric(metric)
        t, rows = self.tokens(), self.split_rows(split)
        full, corr_full, start = t["clean"][rows], t["corrupted"][rows], t["start"]
        clean, corr = full[:, :-1], corr_full[:, :-1]
        labels, cf = full[:, 1:], corr_full[:, 1:]
        pos_mask = torch.zeros_like(clean, dtype=torch.bool)
        pos_mask[:, start:] = True  # the second copy's tokens, each predicting the repeat's next
        wrong = torch.where(cf != labels, cf, (labels + 1) % int(full.max() + 1)).unsqueeze(-1)
        return TaskData(
            clean=clean, corrupted=corr, pos_mask=pos_mask, metric=self.metrics[metric], categorical=True,
            correct=labels, wrong=wrong, counterfactual=cf, ablation=ablation,
            info={"split": split, "n": int(clean.shape[0]), "masked_positions": int(pos_mask.sum()),
                  "natural_metric": "negative log-probability (lower is better)" if metric == "nll" else "KL",
                  "ground_truth": "none stored: scores and faithfulness, no AUC"},
        )
