"""tracr analogues of ACDC's four pretrained-model tasks (IOI, Greater-Than, Docstring,
Induction): small compiled models whose circuit is exact (docs/tracr.md#rasp-analogues).

Each task compiles its RASP program (harness.rasp_programs) at run time, causally, at the
sizes given to the constructor (defaults: `ANALOGUE_SIZES`), and builds clean and corrupted
prompts in the spirit of the ACDC task it mirrors. The corruption is chosen so that every
variable the program uses differs between a clean prompt and its corrupted partner at the
positions that matter; otherwise a ground-truth edge could not be seen under resample ablation
(docs/tracr.md#analogue-limits). Positions (indices) differ only through ACDC's position scramble
of the resample source run (see `tracr_tasks`).

Metric: `l2`, as for ACDC's tracr tasks: the mean squared difference between the patched and
clean model's outputs (one-hots over the output values) at the scored positions. The scored
positions are where the ACDC task reads its metric: the last position (IOI, Greater-Than,
Docstring) or the second, repeated half (Induction).
`correct` / `wrong` / `counterfactual` are output-class indices: the right answer, the task's
natural wrong answer, and the answer slot of the corrupted prompt.
"""
from __future__ import annotations

import random

import torch

from harness.programs.rasp_programs import ANALOGUE_SIZES, GREATERTHAN_TEMPLATE, IOI_TEMPLATE, analogue_spec, analogue_words
from harness.programs.tracr_models import load_tracr
from harness.core.data import TaskData, check_split
from harness.core.references import acdc_position_scramble
from harness.tasks.tracr_tasks import L2, TracrTask
from harness.tasks import register_task

SPLIT_OFFSET = {"validation": 0, "test": 1}  # seeds the prompt generator per split


class TracrAnalogue(TracrTask):
    """Shared machinery: sizes, the compiled model, seeded prompt generation and packing.

    50 prompts per split for every analogue (ACDC: 100 for IOI and Greater-Than): the circuits
    are exact, so more prompts add run time, not information.
    """

    n_per_split = 50

    def __init__(self, **sizes):
        super().__init__()
        self.words = analogue_words(self.name, **sizes)
        self.sizes = self.words["sizes"]
        self.spec = analogue_spec(self.name, **sizes)

    def tracr(self):
        if self._model is None:
            self._model = load_tracr(self.spec)
        return self._model

    def _default_sizes(self) -> bool:
        return self.sizes == ANALOGUE_SIZES[self.name]

    def ground_truth_paths(self) -> list:
        return super().ground_truth_paths() if self._default_sizes() else []

    def read_ground_truths(self) -> tuple:
        """The files under ground_truth/ at default sizes; derived on the fly at other sizes
        (the circuit's edges do not depend on sizes, but the file is for the default model)."""
        if self._default_sizes():
            return super().read_ground_truths()
        from harness.programs.structural_gt import derive_all

        return derive_all(self.name, self.tracr()), {}

    def out_index(self) -> dict:
        """Output value (as str) -> output class index."""
        return {lab.split(":", 1)[1]: i for i, lab in enumerate(self.tracr().output_labels)}

    def examples(self, rng: random.Random) -> tuple[list, list, list, list, list]:
        """One (clean, corrupted, correct, wrong, counterfactual) example; answers are lists of
        output values per scored position (wrong: a list per position)."""
        raise NotImplementedError

    def scored(self, length: int) -> list[int]:
        """Model positions (BOS = 0) the metric reads."""
        return [length]

    def data(self, split="validation", seed=0, ablation="resample"):
        check_split(split)
        rng = random.Random(1000003 * seed + SPLIT_OFFSET[split])
        rows = [self.examples(rng) for _ in range(self.n_per_split)]
        m = self.tracr()
        clean, corr = m.encode([r[0] for r in rows]), m.encode([r[1] for r in rows])
        B, P = clean.shape
        idx = self.out_index()
        pos = self.scored(P - 1)
        pos_mask = torch.zeros(B, P, dtype=torch.bool)
        pos_mask[:, pos] = True
        n_wrong = len(rows[0][3][0])
        correct = torch.zeros(B, P, dtype=torch.long)
        cf = torch.zeros(B, P, dtype=torch.long)
        wrong = torch.zeros(B, P, n_wrong, dtype=torch.long)
        for b, (_, _, c, w, f) in enumerate(rows):
            correct[b, pos] = torch.tensor([idx[v] for v in c])
            cf[b, pos] = torch.tensor([idx[v] for v in f])
            wrong[b, pos] = torch.tensor([[idx[v] for v in ws] for ws in w])
        return TaskData(
            clean=clean, corrupted=corr, pos_mask=pos_mask, metric=L2,
            categorical=True, correct=correct, wrong=wrong, counterfactual=cf, ablation=ablation,
            position_scramble=acdc_position_scramble(P),
            info={"split": split, "n": B, "sizes": dict(self.sizes), "mirrors": self.mirrors},
        )


@register_task
class TracrInduction(TracrAnalogue):
    """[BOS, t_1..t_n, t_1..t_n] with distinct t's; at every position of the repeated half the
    program predicts the token that followed the current token's first occurrence.

    Corrupted: another repeated sequence [u, u] with u_i != t_i at every position (ACDC patches
    from other rows of the data). Replacing only the first half would leave the induction
    head's query (the current token) unchanged at the scored positions, and the second half
    only its keys and values, so each would hide ground-truth edges from resample ablation.
    wrong = counterfactual = the corrupted sequence's continuation u_{i+1}.
    """

    name = model = program = "tracr-induction"
    mirrors = "induction"
    siit_inputs = "uniform"  # SIIT trains on uniform sequences alone (harness.tasks.trained_tasks.training_inputs)
    description = "tracr analogue of ACDC's Induction: previous-token head, then match-and-copy induction head"

    def scored(self, length):
        return list(range(length // 2 + 1, length + 1))

    def examples(self, rng):
        toks, n = self.words["tokens"], self.sizes["half_len"]
        t = rng.sample(toks, n)
        while True:
            u = rng.sample(toks, n)
            if all(a != b for a, b in zip(t, u)):
                break
        nxt = lambda s: s[1:] + s[:1]  # noqa: E731  (after t_n comes t_1, the next repeat)
        cf = nxt(u)
        return t + t, u + u, nxt(t), [[v] for v in cf], cf


@register_task
class TracrIOI(TracrAnalogue):
    """"then A and B went to the PLACE S gave a OBJECT to" (ABBA or BABA: {A, B} = {IO, S});
    the answer at the final "to" is IO. Names are capitalised tokens.

    Corrupted: ACDC's ABC prompts, "then X and Z went to the PLACE Y gave a OBJECT to", with X
    (IO slot), Z (S1 slot) and Y (S2 slot) three distinct names different from IO and S; no
    name repeats, so the duplicate/S-inhibition path finds nothing. wrong = S;
    counterfactual = X, the name in the corrupted prompt's IO slot.
    """

    name = model = program = "tracr-ioi"
    mirrors = "ioi"
    description = "tracr analogue of ACDC's IOI: duplicate-name head, S-inhibition head, name mover"

    def examples(self, rng):
        w = self.words
        io, s, x, y, z = rng.sample(w["names"], 5)
        place, obj = rng.choice(w["places"]), rng.choice(w["objects"])
        abba = rng.random() < 0.5

        def fill(io_, s1, s2):
            a, b = (io_, s1) if abba else (s1, io_)
            slots = {"{A}": a, "{B}": b, "{S}": s2, "{PLACE}": place, "{OBJECT}": obj}
            return [slots.get(t, t) for t in IOI_TEMPLATE]

        return fill(io, s, s), fill(x, z, y), [io], [[s]], [x]

    def role_swap(self, prompt: list) -> list:
        """`prompt` (a clean one) with its two names exchanged wherever they stand: IO becomes the
        repeated name and S the other, every other token and position kept. Unlike the ABC
        corruption, which leaves the program no answer under any single node's interchange, this
        minimal pair gives the S-inhibition head's and the name mover's interchanges an answer
        (the other name), so interchange training can use it (TrainConfig.counterpart)."""
        names = list(dict.fromkeys(t for t in prompt if t in self.words["names"]))
        if len(names) != 2:
            raise ValueError(f"a role swap needs a clean IOI prompt (two names), not {' '.join(prompt)}")
        a, b = names
        return [b if t == a else a if t == b else t for t in prompt]


@register_task
class TracrGreaterThan(TracrAnalogue):
    """"the NOUN lasted from YY to": the answer is the class of the smallest year greater than
    YY ("YY+1"); years are two-digit tokens "02".."(n_years+1)".

    Corrupted: ACDC's "01" dataset, the same prompt with YY replaced by "01", whose answer "02"
    is below every clean answer. wrong = YY itself (ACDC counts YY as not greater);
    counterfactual = "02".
    """

    name = model = program = "tracr-greaterthan"
    mirrors = "greaterthan"
    description = "tracr analogue of ACDC's Greater-Than: a head moves the year, an MLP maps it to a greater year"

    def examples(self, rng):
        yy, noun = rng.choice(self.words["years"]), rng.choice(self.words["nouns"])
        fill = lambda y: [{"{YY}": y, "{NOUN}": noun}.get(t, t) for t in GREATERTHAN_TEMPLATE]  # noqa: E731
        return fill(yy), fill("01"), [f"{int(yy) + 1:02d}"], [[yy]], ["02"]


@register_task
class TracrDocstring(TracrAnalogue):
    """"def( a_1 .. a_n ): :param m_1 .. :param m_k :param", where m_1..m_k are consecutive
    signature parameters a_s..a_{s+k-1} (s random); the answer is a_{s+k}, the parameter after
    the last documented one (ACDC: 2 prefix + 3 matching + 1 suffix arguments, 2 documented).

    Corrupted: ACDC's random_random variant: the k+1 matching signature parameters and the k
    documented ones are replaced by fresh names (all different), prefix and suffix kept.
    wrong = the other signature parameters; counterfactual = the corrupted signature's
    parameter in the answer slot.
    """

    name = model = program = "tracr-docstring"
    mirrors = "docstring"
    # SIIT trains on 32,768 prompts alone (harness.tasks.trained_tasks.training_pool): on 4,096 a trained model
    # memorises them, and uniform sequences teach a copy, not the lookup (docs/trained.md#training-data)
    siit_inputs, siit_pool = "prompts-only", 32768
    description = "tracr analogue of ACDC's Docstring: previous-token head, pair MLP, docstring mover head"

    def examples(self, rng):
        n, k = self.sizes["n_args"], self.sizes["n_doc"]
        names = rng.sample(self.words["params"], len(self.words["params"]))
        sig, fresh = names[:n], names[n : n + 2 * k + 1]
        s = rng.randrange(n - k)
        doc = sig[s : s + k]
        csig = sig[:s] + fresh[: k + 1] + sig[s + k + 1 :]
        cdoc = fresh[k + 1 :]

        def prompt(sig_, doc_):
            return ["def(", *sig_, "):"] + [t for d in doc_ for t in (":param", d)] + [":param"]

        answer = sig[s + k]
        return prompt(sig, doc), prompt(csig, cdoc), [answer], [[a for a in sig if a != answer]], [csig[s + k]]


ANALOGUES = (TracrInduction, TracrIOI, TracrGreaterThan, TracrDocstring)
