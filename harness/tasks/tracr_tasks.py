"""ACDC's two tracr tasks, on models compiled at run time from the bundled RASP programs.

Resample ablation follows ACDC's tracr protocol: the corrupted run's positional embeddings are
permuted with ACDC's seed (`references.acdc_position_scramble`), since positions are otherwise
identical in both runs and every positional edge would be invisible to patching
(docs/graph-and-patching.md#resample-ablation-for-tracr). `circuit-bench run --no-position-scramble`
keeps the unscrambled corrupted run.

Metric (docs/tasks.md#tracr-tasks): `objectives.l2`, the mean squared difference between the patched and
the clean model's outputs at the scored positions (all output dimensions). KL is refused: tracr
outputs are one-hots or a single number, not distributions.
"""
from __future__ import annotations

import itertools

import torch

from harness.core import objectives
from harness.core.data import Metric, TaskData, log_thresholds, check_split, derangement
from harness.core.references import acdc_position_scramble
from harness.programs.tracr_models import load_tracr
from harness.tasks.base import Task
from harness.tasks import register_task

# ACDC's tracr sweep (experiments/launch_spreadsheet.py): "typical metric value range 0.0-0.1"
L2 = Metric("l2", objectives.l2, {"pos_mask": "pos_mask"}, acdc_thresholds=log_thresholds(-5, -1, 21))


class TracrTask(Task):
    supports_kl = False
    metrics = {"l2": L2}  # the only one: KL is refused (module docstring)
    default_dtype = torch.float64  # tiny models: float64 costs little, and float32 round-off ranked edges
    reset_kind = "random"  # one head per layer: ACDC's head permutation would change nothing
    reset_by_default = True
    program: str = ""

    def __init__(self):
        self._model = None

    def tracr(self):
        if self._model is None:
            self._model = load_tracr(self.program)
        return self._model

    def loading_line(self) -> str:
        return "compiling its RASP program with tracr (read from the cache after the first run) and building its data"

    def ground_truth_inputs(self) -> torch.Tensor:
        """[batch, pos] the clean inputs of the validation and test splits (seed 0): what the
        structural-zero ground truth is derived on (harness.programs.structural_gt.bos_default_heads)."""
        return torch.cat([self.data(split).clean for split in ("validation", "test")])

    def load_model(self, device="cpu", dtype=torch.float32, weights_dir=None):
        return self.tracr().weights.to(device, dtype)

    def _pack(self, seqs, corrupted_seqs, correct=None, wrong=None, counterfactual=None, categorical=True, ablation="resample",
              info=None, ids=None):
        """`ids`: (clean, corrupted) token ids as given, instead of encoding `seqs` (ACDC's encoding)."""
        m = self.tracr()
        clean, corr = ids if ids is not None else (m.encode(seqs), m.encode(corrupted_seqs))
        pos_mask = torch.zeros_like(clean, dtype=torch.bool)
        pos_mask[:, 1:] = True  # position 0 is BOS: its output is meaningless
        return TaskData(
            clean=clean, corrupted=corr, pos_mask=pos_mask, metric=L2,
            categorical=categorical, correct=correct, wrong=wrong, counterfactual=counterfactual,
            ablation=ablation, position_scramble=acdc_position_scramble(clean.shape[1]), info=info or {},
        )


@register_task
class TracrReverse(TracrTask):
    """Reverse a sequence of three tokens from {1, 2, 3} (ACDC's tracr-reverse).

    Data as ACDC builds it: the 6 permutations of (1, 2, 3) after BOS, the same rows for both
    splits; the corrupted rows are a seeded derangement of the clean rows.
    Answers: `correct` is the reversed token (output class = value - 1). `wrong` is the
    corrupted prompt's answer at that position where it differs, else the next class
    (mod 3), so every position has a wrong answer distinct from the right one.
    """

    name = "tracr-reverse"
    model = "tracr-reverse"
    program = "tracr-reverse"
    description = "tracr: reverse a length-3 sequence over {1,2,3} (ACDC tracr-reverse)"

    def data(self, split="validation", seed=0, ablation="resample"):
        check_split(split)
        seqs = [list(p) for p in itertools.permutations([1, 2, 3])]
        g = torch.Generator().manual_seed(seed)
        perm = derangement(len(seqs), g)
        corr = [seqs[i] for i in perm.tolist()]
        B, P = len(seqs), 4
        correct = torch.zeros(B, P, dtype=torch.long)
        cf = torch.zeros(B, P, dtype=torch.long)
        correct[:, 1:] = torch.tensor([[v - 1 for v in reversed(s)] for s in seqs])
        cf[:, 1:] = torch.tensor([[v - 1 for v in reversed(s)] for s in corr])
        wrong = torch.where(cf != correct, cf, (correct + 1) % 3).unsqueeze(-1)
        return self._pack(seqs, corr, correct, wrong, cf, True, ablation, {"split": split, "n": B})


@register_task
class TracrXProportion(TracrTask):
    """At each position, the fraction of "x" among the tokens so far (ACDC's tracr-proportion).

    Encoding, deliberately not ACDC's: ACDC feeds ids 0-3 for "wxyz" with no BOS, which the
    compiled model reads as {BOS, pad, w, x} (docs/tasks.md#tracr-xproportion), so its inputs are off the
    program's distribution. We encode properly: BOS, then 4 tokens over {w, x, y, z}, through
    the compiler's own input encoder; positions 1-4 are scored. Sizes follow ACDC: 100
    distinct strings drawn (seeded) from all 4^4, the first 50 for validation and the next 50
    for test; corrupted rows are a seeded derangement within the split (the paper says no fixed
    points; ACDC's code did not enforce it).
    """

    name = "tracr-xproportion"
    model = "tracr-xproportion"
    program = "tracr-xproportion"
    description = "tracr: running fraction of 'x' tokens (ACDC tracr-proportion)"
    n_per_split = 50

    def strings(self, split: str, seed: int, g: torch.Generator) -> list:
        """The split's 50 of 100 distinct strings drawn with `g` (seeded with `seed`) from all 4^4."""
        check_split(split)
        allseq = [list(s) for s in itertools.product("wxyz", repeat=4)]
        order = torch.randperm(len(allseq), generator=g.manual_seed(seed))[: 2 * self.n_per_split].tolist()
        rows = order[: self.n_per_split] if split == "validation" else order[self.n_per_split :]
        return [allseq[i] for i in rows]

    def data(self, split="validation", seed=0, ablation="resample"):
        seqs = self.strings(split, seed, torch.Generator())
        perm = derangement(len(seqs), torch.Generator().manual_seed(seed + 1 + (split == "test")))
        corr = [seqs[i] for i in perm.tolist()]
        return self._pack(seqs, corr, categorical=False, ablation=ablation, info={"split": split, "n": len(seqs)})


@register_task
class TracrXProportionACDC(TracrXProportion):
    """tracr-xproportion with ACDC's own inputs, to reproduce the paper's tracr-proportion numbers.

    ACDC (`acdc/tracr_task/utils.py::get_all_tracr_things`) feeds the ids ord(c) - ord("w") of
    4 letters over "wxyz" with no BOS, so the model reads {BOS, pad, w, x} for {w, x, y, z}
    (docs/tasks.md#tracr-xproportion): off the program's distribution, which is why
    `tracr-xproportion` encodes properly. Otherwise as ACDC: 100 distinct strings drawn from all
    4^4 (here with `seed`, in ACDC from the global torch seed), the first 50 for validation and the
    next 50 for test, the corrupted rows a random permutation of the split's rows (fixed points
    allowed, as in ACDC's code); positions 1-3 are scored. Ground truth: tracr-xproportion's.
    """

    name = "tracr-xproportion-acdc"
    description = "tracr-xproportion on ACDC's inputs (ids 0-3, no BOS), to reproduce its Tables 2-3"
    mirrors = "tracr-xproportion (ACDC's encoding)"
    reproduction_only = True
    ground_truth_task = "tracr-xproportion"

    def data(self, split="validation", seed=0, ablation="resample"):
        g = torch.Generator()
        seqs = self.strings(split, seed, g)
        perm = torch.randperm(len(seqs), generator=g)
        clean = torch.tensor([[ord(c) - ord("w") for c in s] for s in seqs], dtype=torch.long)
        return self._pack(seqs, None, categorical=False, ablation=ablation, ids=(clean, clean[perm]),
                          info={"split": split, "n": len(seqs), "encoding": "ACDC's (ids 0-3, no BOS)"})
