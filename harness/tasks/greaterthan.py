"""Greater-Than on GPT-2 small, with ACDC's data (docs/tasks.md#greater-than; acdc/greaterthan/utils.py
in [ACDC-repo], after Hanna et al. 2023).

Years: for each century 11..17 the years c02..c98 whose " YYYY" is exactly the tokens
[" XX", "YY"] (the same tokens as " XX" and "YY" alone), minus the first and last such year
of the century. Prompt "The {noun} lasted from the year {YYYY} to {XX}" (no BOS, 10 tokens:
YY at position 7, the metric at position 9). Sampling: torch seed 54, one randint vector of
200 noun indices, then one of 200 year indices. Corrupted: the same tokens with position 7
replaced by the "01" token (id 486 in GPT-2), Hanna et al.'s 01-dataset.
Validation = rows 0-99, test = rows 100-199.
Answers (for gradient objectives; ACDC's metric uses all 100 year tokens): correct = "YY+1"
(the smallest greater year), wrong = ["YY"] (ACDC counts YY itself as not greater),
counterfactual = "02" (the corrupted prompt's smallest greater year).
"""
from __future__ import annotations

import dataclasses

import torch

from harness.tasks.data_lists import GREATERTHAN_NOUNS
from harness.core import objectives
from harness.core.data import Metric, TaskData, log_thresholds
from harness.tasks.pretrained import PretrainedTask, encode, last_position_answers, stack_equal
from harness.tasks import register_task

N_PROMPTS = 200
TEMPLATE = "The {noun} lasted from the year {year} to "


def year_tokens(tokenizer, single: bool = False) -> list:
    """Token id of the two-digit string "00".."99" (no leading space), first token each
    (`single`: each must be one token, else a ValueError)."""
    ids = [encode(tokenizer, f"{i:02d}") for i in range(100)]
    if single and any(len(i) != 1 for i in ids):
        bad = next(f"{i:02d}" for i, t in enumerate(ids) if len(t) != 1)
        raise ValueError(f"the two-digit year {bad!r} is {len(ids[int(bad)])} tokens in this tokenizer; Greater-Than "
                         "reads one logit per year, so \"00\"..\"99\" must each be one token")
    return [i[0] for i in ids]


def acdc_years(tokenizer) -> list:
    """ACDC's YEARS list (strings), century by century."""
    years = []
    for century in range(11, 18):
        ok = []
        for year in range(century * 100 + 2, century * 100 + 99):
            s = str(year)
            if encode(tokenizer, f" {s}") == [encode(tokenizer, f" {s[:2]}")[0], encode(tokenizer, s[2:])[0]]:
                ok.append(s)
        years += ok[1:-1]
    return years


def greaterthan_prompts(tokenizer, n: int = N_PROMPTS) -> list:
    years = acdc_years(tokenizer)
    g = torch.Generator().manual_seed(54)  # = torch.random.manual_seed(54) on the CPU generator
    nouns = torch.randint(0, len(GREATERTHAN_NOUNS), (n,), generator=g)
    picks = torch.randint(0, len(years), (n,), generator=g)
    return [(GREATERTHAN_NOUNS[int(a)], years[int(b)]) for a, b in zip(nouns, picks)]


@register_task
class GreaterThan(PretrainedTask):
    name = "greaterthan"
    model = "gpt2"
    description = "Greater-Than on GPT-2 small (ACDC: years 11XX-17XX, '01' corruption, 100+100)"
    requires = ("gpt2", "gpt2-tokenizer")
    prompt_tokens = 10
    tokenizer_key = "gpt2-tokenizer"
    n_per_split = 100
    metrics = {
        "prob_diff": Metric("prob_diff", objectives.prob_diff, {"yy": "yy"},  # + year_tokens, set in data()
                            acdc_thresholds=log_thresholds(-3, -1, 21)),
        "kl": Metric("kl", objectives.kl, {"pos_mask": "pos_mask"}, acdc_thresholds=log_thresholds(-6, -4, 11)),
    }

    def tokens(self) -> dict:
        if self._cache is None:
            tok = self.tokenizer()
            try:
                ytok = year_tokens(tok, single=self.on_model)
            except ValueError as e:
                raise ValueError(f"{self.name}: {e}") from None
            prompts = greaterthan_prompts(tok)
            if not prompts:
                raise ValueError(f"{self.name}: no year ' YYYY' tokenises as ' XX' + 'YY' in {self.model}'s tokenizer, "
                                 "which Greater-Than's data needs")
            texts = [TEMPLATE.format(noun=noun, year=year) + year[:2] for noun, year in prompts]
            clean = stack_equal([self.encode_prompt(tok, t) for t in texts], self.name)
            self.check_length(clean, "prompts")
            yy = torch.tensor([int(year[2:]) for _, year in prompts])
            ytab = torch.tensor(ytok)
            if not torch.equal(clean[:, -3], ytab[yy]):
                raise ValueError(f"{self.name}: the third token from the end is not the year's YY token")
            corrupted = clean.clone()
            corrupted[:, -3] = ytab[1]  # "01"
            self._cache = {"clean": clean, "corrupted": corrupted, "yy": yy, "year_tokens": ytab, "texts": texts}
        return self._cache

    def data(self, split="validation", seed=0, ablation="resample", metric=None) -> TaskData:
        """ACDC's fixed data (the same for every `seed`); metric "prob_diff" (default) or "kl"."""
        metric = self.check_metric(metric)
        t, rows = self.tokens(), self.split_rows(split)
        clean, corr, yy, ytab = t["clean"][rows], t["corrupted"][rows], t["yy"][rows], t["year_tokens"]
        pos_mask, correct, wrong, cf = last_position_answers(clean, ytab[(yy + 1).clamp(max=99)], ytab[yy],
                                                             ytab[2].expand(clean.shape[0]))
        loss = dataclasses.replace(self.metrics["prob_diff"], const={"year_tokens": ytab})
        fn = loss if metric == "prob_diff" else self.metrics[metric]
        return TaskData(
            clean=clean, corrupted=corr, pos_mask=pos_mask, metric=fn, categorical=True, correct=correct, wrong=wrong,
            counterfactual=cf, rows={"yy": yy}, ablation=ablation, loss=loss,
            info={"split": split, "n": clean.shape[0],
                  "natural_metric": "P(>YY) - P(<=YY) = -prob_diff" if metric == "prob_diff" else "KL"},
        )
