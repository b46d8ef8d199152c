"""IOI on GPT-2 small, with ACDC's data (docs/tasks.md#ioi; acdc/ioi/ioi_dataset.py and
acdc/ioi/utils.py in [ACDC-repo]).

Clean: 200 prompts of the first ABBA template "Then, [A] and [B] went to the [PLACE]. [B] gave
a [OBJECT] to [A]" (A = IO, B = S), drawn with Python's `random` seeded with
(0 + 987654321) % 123456789 = 9: per prompt one template draw, then three names until they are
distinct (the first two are IO and S), then a PLACE and an OBJECT. No BOS.
Corrupted ("ABC"): three word-level flips with numpy's legacy RNG, seeds (s + 345467) % 5432
for s = 1, 2, 3: IO -> random name (not IO, not S) at its first two occurrences; S -> random
name at its first and last occurrence (no collision check); S1 -> random name at the first
occurrence of the new S.
Inputs are the first 15 of 16 tokens; the metric reads position 14 ("to"); the label is the
IO token. Validation = rows 0-99, test = rows 100-199.
Answers: correct = IO, wrong = [S], counterfactual = the corrupted prompt's IO.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from harness.tasks.data_lists import IOI_NAMES, IOI_OBJECTS, IOI_PLACES
from harness.core import objectives
from harness.core.data import Metric, TaskData, log_thresholds
from harness.tasks.pretrained import PretrainedTask, last_position_answers, stack_equal
from harness.tasks import register_task

TEMPLATE = "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
N_PROMPTS = 200


def ioi_prompts(n: int = N_PROMPTS, seed: int = 0) -> list:
    """ACDC's clean prompts: dicts with text, IO, S, PLACE, OBJECT."""
    rng = random.Random((seed + 987654321) % 123456789)
    templates = [TEMPLATE]
    out = []
    for _ in range(n):
        template = rng.choice(templates)  # one template, but the draw still advances the RNG
        a = b = c = ""
        while len({a, b, c}) < 3:
            a, b, c = rng.choice(IOI_NAMES), rng.choice(IOI_NAMES), rng.choice(IOI_NAMES)
        place, obj = rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
        text = template.replace("[PLACE]", place).replace("[OBJECT]", obj).replace("[A]", a).replace("[B]", b)
        out.append({"text": text, "IO": a, "S": b, "PLACE": place, "OBJECT": obj})
    return out


def _random_name(rs: np.random.RandomState, avoid=()) -> str:
    name = IOI_NAMES[rs.randint(len(IOI_NAMES))]
    while name in avoid:
        name = IOI_NAMES[rs.randint(len(IOI_NAMES))]
    return name


def flip(prompts: list, which: str, seed: int) -> list:
    """One of ACDC's word-level ("text".split(" ")) random-name flips: "IO", "S" or "S1"."""
    rs = np.random.RandomState((seed + 345467) % 5432)
    out = []
    for p in prompts:
        p, words = dict(p), p["text"].split(" ")
        if which == "IO":
            new = _random_name(rs, (p["IO"], p["S"]))
            words[words.index(p["IO"])] = new
            words[words.index(p["IO"])] = new
            p["IO"] = new
        elif which in ("S", "S1"):
            new = _random_name(rs)
            words[words.index(p["S"])] = new
            if which == "S":
                last = len(words) - 1 - words[::-1].index(p["S"])
                words[last] = new
                p["S"] = new
        else:
            raise ValueError(which)
        p["text"] = " ".join(words)
        out.append(p)
    return out


def abc_prompts(clean: list) -> list:
    return flip(flip(flip(clean, "IO", 1), "S", 2), "S1", 3)


SWEEP_LOGIT_DIFF = log_thresholds(-4, 0, 21)  # ACDC's experiments/launch_spreadsheet.py
SWEEP_KL = log_thresholds(-6, 0, 31)


@register_task
class IOI(PretrainedTask):
    name = "ioi"
    model = "gpt2"
    description = "Indirect Object Identification on GPT-2 small (ACDC: ABBA template, ABC corruption, 100+100)"
    requires = ("gpt2", "gpt2-tokenizer")
    tokenizer_key = "gpt2-tokenizer"
    n_per_split = 100
    prompt_tokens = 16
    metrics = {
        "logit_diff": Metric("logit_diff", objectives.logit_diff, {"correct": "io", "wrong": "s"}, acdc_thresholds=SWEEP_LOGIT_DIFF),
        "kl": Metric("kl", objectives.kl, {"pos_mask": "pos_mask"}, acdc_thresholds=SWEEP_KL),
    }

    def tokens(self) -> dict:
        """All 200 rows: clean/corrupted token ids [200, 16] (on GPT-2) and the IO/S/ABC-IO token ids."""
        if self._cache is None:
            tok = self.tokenizer()
            clean = ioi_prompts()
            abc = abc_prompts(clean)
            first = lambda name: self.one_token(tok, " " + name, "the name")  # noqa: E731
            io = torch.tensor([first(p["IO"]) for p in clean])
            s = torch.tensor([first(p["S"]) for p in clean])
            ct = stack_equal([self.encode_prompt(tok, p["text"]) for p in clean], f"{self.name} clean")
            at = stack_equal([self.encode_prompt(tok, p["text"]) for p in abc], f"{self.name} corrupted")
            self.check_length(ct, "clean")
            if at.shape != ct.shape:
                raise ValueError(f"{self.name}: clean and corrupted prompts have {ct.shape[1]} and {at.shape[1]} tokens")
            if not torch.equal(io, ct[:, -1]):
                raise ValueError(f"{self.name}: the label token (the last) is not the IO name's first token")
            self._cache = {"clean": ct, "corrupted": at, "io": io, "s": s,
                           "abc_io": at[:, -1].clone(), "prompts": clean, "abc_prompts": abc}
        return self._cache

    def data(self, split="validation", seed=0, ablation="resample", metric=None) -> TaskData:
        """ACDC's fixed data (the same for every `seed`); metric "logit_diff" (default) or "kl"."""
        metric = self.check_metric(metric)
        t, rows = self.tokens(), self.split_rows(split)
        clean, corr = t["clean"][rows, :-1], t["corrupted"][rows, :-1]
        # the counterfactual answer is S, the wrong answer of ACDC's loss metric (not the ABC prompt's new name)
        pos_mask, correct, wrong, cf = last_position_answers(clean, t["io"][rows], t["s"][rows], t["s"][rows])
        return TaskData(
            clean=clean, corrupted=corr, pos_mask=pos_mask, metric=self.metrics[metric], categorical=True,
            correct=correct, wrong=wrong, counterfactual=cf, rows={"io": t["io"][rows], "s": t["s"][rows]},
            ablation=ablation, loss=self.metrics["logit_diff"],
            info={"split": split, "n": clean.shape[0], "natural_metric": "IO - S logit difference = -logit_diff" if metric == "logit_diff" else "KL"},
        )
