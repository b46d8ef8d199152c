"""Docstring on attn-only-4l, with ACDC's data (docs/tasks.md#docstring; acdc/docstring/prompts.py
`docstring_induction_prompt_generator` and acdc/docstring/utils.py in [ACDC-repo], after
Heimersheim & Janiak 2023).

Prompt i (i = 0..99; validation 0-49, test 50-99) reseeds Python's `random` with i, draws 15
distinct variable names (method name, then 14 args split in this order: random_answer 1,
random_random_mid_def 3, random_random_mid_doc 2, not_matching 2, matching 3, def_prefix 2,
def_suffix 1), then 3 description nouns, then 2 nouns for each of the 2 documented args:

    \\ndef {met}(self, {p1}, {p2}, {m1}, {m2}, {m3}, {s1}):\\n    \"\"\"{w1} {w2} {w3}\\n\\n
        :param {m1}: {n} {n}\\n    :param {m2}: {n} {n}\\n    :param

The model must predict " m3". Corrupted: the "random_random" variant (def args = prefix + the
3 random_random_mid_def args + suffix; documented args = the 2 random_random_mid_doc args).
Tokens: BOS + the prompt (TL's `to_tokens(prepend_bos=True)`), tokenizer
NeelNanda/gpt-neox-tokenizer-digits; the metric reads the last position.
Answers: correct = first token of " m3"; wrong = first tokens of " " + the other 13 args;
counterfactual = the corrupted prompt's arg in the answer slot (its 3rd mid def arg).
"""
from __future__ import annotations

import random

import torch

from harness.tasks.data_lists import DOCSTRING_NOUNS, DOCSTRING_VARIABLE_NAMES
from harness.core import objectives
from harness.core.data import Metric, TaskData, log_thresholds
from harness.tasks.pretrained import PretrainedTask, encode, last_position_answers, stack_equal
from harness.tasks import register_task

SWEEP = log_thresholds(-4, 0, 21)  # ACDC's sweep for both metrics (experiments/launch_spreadsheet.py)

N_PROMPTS = 100


def render(met: str, desc: list, def_args: list, doc_args: list, doc_desc: list) -> str:
    """ACDC's reST docstring template (style "rest", no defaults)."""
    ind = "    "
    doc = "\n".join(f"{ind}:param {a}: {' '.join(d)}" for a, d in zip(doc_args, doc_desc))
    return f'\ndef {met}(self, {", ".join(def_args)}):\n{ind}"""{" ".join(desc)}\n\n{doc}\n{ind}:param'


def docstring_prompt(seed: int) -> dict:
    """ACDC's prompt for `seed` (n_matching 3, def prefix 2, def suffix 1, doc prefix 0,
    met_desc_len 3, arg_desc_len 2): clean and random_random texts and the answers."""
    rng = random.Random(seed)
    met, *args = rng.sample(DOCSTRING_VARIABLE_NAMES, 15)
    random_answer, rr_def, rr_doc, not_matching, matching, prefix, suffix = (
        args[0], args[1:4], args[4:6], args[6:8], args[8:11], args[11:13], args[13:14])
    desc = rng.sample(DOCSTRING_NOUNS, 3)
    doc_desc = [rng.sample(DOCSTRING_NOUNS, 2) for _ in range(2)]
    return {
        "clean": render(met, desc, prefix + matching + suffix, matching[:2], doc_desc),
        "corrupted": render(met, desc, prefix + rr_def + suffix, rr_doc, doc_desc),
        "answer": matching[2],
        "wrong": [a for a in args if a != matching[2]],
        "corrupted_answer": rr_def[2],
        "unused": (random_answer, not_matching),
    }


@register_task
class Docstring(PretrainedTask):
    name = "docstring"
    model = "attn-only-4l"
    description = "Docstring argument completion on attn-only-4l (ACDC: random_random corruption, 50+50)"
    requires = ("attn-only-4l", "gpt-neox-tokenizer-digits")
    tokenizer_key = "gpt-neox-tokenizer-digits"
    n_per_split = 50
    metrics = {
        "docstring_metric": Metric("docstring_metric", objectives.docstring_metric,
                                   {"correct": "answer", "wrong": "wrong_args"}, acdc_thresholds=SWEEP),
        "kl": Metric("kl", objectives.kl, {"pos_mask": "pos_mask"}, acdc_thresholds=SWEEP),
    }

    def tokens(self) -> dict:
        if self._cache is None:
            tok = self.tokenizer()
            bos = tok.bos_token_id
            if bos is None:
                raise ValueError("docstring: the tokenizer has no BOS token (ACDC prepends one)")
            prompts = [docstring_prompt(i) for i in range(N_PROMPTS)]
            clean = stack_equal([[bos] + encode(tok, p["clean"]) for p in prompts], "docstring clean")
            corr = stack_equal([[bos] + encode(tok, p["corrupted"]) for p in prompts], "docstring corrupted")
            if corr.shape != clean.shape:
                raise ValueError(f"docstring: clean {tuple(clean.shape)} and corrupted {tuple(corr.shape)} differ")
            first = lambda w: encode(tok, " " + w)[0]  # noqa: E731
            self._cache = {
                "clean": clean, "corrupted": corr, "prompts": prompts,
                "correct": torch.tensor([first(p["answer"]) for p in prompts]),
                "wrong": torch.tensor([[first(w) for w in p["wrong"]] for p in prompts]),
                "cf": torch.tensor([first(p["corrupted_answer"]) for p in prompts]),
            }
        return self._cache

    def data(self, split="validation", seed=0, ablation="resample", metric=None) -> TaskData:
        """ACDC's fixed data (the same for every `seed`); metric "docstring_metric" (default) or "kl"."""
        metric = self.check_metric(metric)
        t, rows = self.tokens(), self.split_rows(split)
        clean, corr = t["clean"][rows], t["corrupted"][rows]
        pos_mask, correct, wrong, cf = last_position_answers(clean, t["correct"][rows], t["wrong"][rows], t["cf"][rows])
        return TaskData(
            clean=clean, corrupted=corr, pos_mask=pos_mask, metric=self.metrics[metric], categorical=True,
            correct=correct, wrong=wrong, counterfactual=cf,
            rows={"answer": t["correct"][rows], "wrong_args": t["wrong"][rows]}, ablation=ablation,
            loss=self.metrics["docstring_metric"],
            info={"split": split, "n": clean.shape[0], "natural_metric": "correct - max wrong logit = -docstring_metric"
                  if metric == "docstring_metric" else "KL"},
        )
