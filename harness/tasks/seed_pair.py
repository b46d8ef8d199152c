"""The seed's own experiment: one pair of IOI prompts on GPT-2 small.

Clean prompts (the pair is its own corruption: each prompt's corrupted run is the other):
  "When Mary and John went to the store, Mary gave a drink to"  -> " John"
  "When Mary and John went to the store, John gave a drink to"  -> " Mary"
The seed's loss is MSE(logit " John", logit " Mary") summed over both prompts: grad-wrong's
`logit-diff-mse` target (which averages over the two, a factor of 2 that changes no ranking),
with weight gradients (`grad-wrong/.../weight-*` and `circuit-bench heads`). The metric is IOI's
logit difference with ACDC's sign; the ground truth is IOI's (ACDC's circuit for this prompt
family). Both splits are the same two prompts.
"""
from __future__ import annotations

import torch

from harness.core import objectives
from harness.core.data import Metric, TaskData, log_thresholds
from harness.tasks import register_task
from harness.tasks.pretrained import PretrainedTask, encode, last_position_answers, stack_equal

PROMPTS = (("When Mary and John went to the store, Mary gave a drink to", " John", " Mary"),
           ("When Mary and John went to the store, John gave a drink to", " Mary", " John"))


@register_task
class SeedPair(PretrainedTask):
    name = "seed-pair"
    model = "gpt2"
    description = "the seed's prompt pair (Mary/John) on GPT-2 small, IOI's ground truth"
    requires = ("gpt2", "gpt2-tokenizer")
    tokenizer_key = "gpt2-tokenizer"
    n_per_split = 2
    ground_truth_task = "ioi"
    metrics = {
        "logit_diff": Metric("logit_diff", objectives.logit_diff, {"correct": "io", "wrong": "s"},
                             acdc_thresholds=log_thresholds(-4, 0, 21)),
        "kl": Metric("kl", objectives.kl, {"pos_mask": "pos_mask"}, acdc_thresholds=log_thresholds(-6, 0, 31)),
    }

    def tokens(self) -> dict:
        if self._cache is None:
            tok = self.tokenizer()
            clean = stack_equal([self.encode_prompt(tok, p) for p, _, _ in PROMPTS], f"{self.name} prompts")
            answers = []
            for _, *names in PROMPTS:
                ids = [encode(tok, n) for n in names]
                if any(len(i) != 1 for i in ids):
                    raise ValueError(f"{self.name}: {names} must each be one token in {self.model}'s tokenizer; "
                                     "this task reads one logit per answer")
                answers.append([i[0] for i in ids])
            a = torch.tensor(answers)
            self._cache = {"clean": clean, "io": a[:, 0], "s": a[:, 1]}
        return self._cache

    def data(self, split="validation", seed=0, ablation="resample", metric=None) -> TaskData:
        metric = self.check_metric(metric)
        self.split_rows(split)  # checks the name; both splits are the pair
        t = self.tokens()
        clean = t["clean"]
        pos_mask, correct, wrong, cf = last_position_answers(clean, t["io"], t["s"], t["s"])
        return TaskData(
            clean=clean, corrupted=clean.flip(0), pos_mask=pos_mask, metric=self.metrics[metric], categorical=True,
            correct=correct, wrong=wrong, counterfactual=cf, rows={"io": t["io"], "s": t["s"]}, ablation=ablation,
            loss=self.metrics["logit_diff"], info={"split": split, "n": 2, "natural_metric": "IO - S logit difference"},
        )
