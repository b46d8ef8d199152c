"""The tie floor of one run, measured: how far float32 round-off moves the method's scores.

Round-off is a property of the model, the method's site, the objective and even the batch size,
not of a constant: on randomly initialised GPT-2 the largest float32-float64 difference of an
activation-site score is 0.4-10 float32 ulps of the objective, of a weight-node score 217; on
tracr's models up to 68 and 132; and on tracr-ioi grad-wrong's uniform target rounds off 0.7 ulps
on 4 or 7 examples, 8 on 5 and 12 on 50 (docs/scoring.md#ties-round-off-and-degenerate-objectives).
So a run measures its own, on its own examples: the variant runs once more in the other precision
(float64 for a float32 run, float32 for a float64 one), and the floor is
`harness.core.numerics.tie_floor` of the largest difference of a score between the two. The
ranking that is scored is the float64 one, with that floor: a float32 run and a float64 run of one
model (tracr's float64 weights are its float32 weights widened; GPT-2's are float32) hold the same
two runs, so they score the same ranking with the same floor and their AUCs are equal by
construction, not by luck (a rule applied to each precision's own scores would still flip the few
pairs whose difference lies within round-off of the floor).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.engine import Engine
from harness.core.numerics import tie_floor, ulps


@dataclass
class Floor:
    floor: float = 0.0  # the absolute tie floor
    round_off: float = 0.0  # the largest |score(float32) - score(float64)| over the run's scores
    scale: float = 0.0  # the objective's magnitude (`MethodSpec.objective_scale`)
    float64_scores: object = None  # [n_edges] float64 tensor: the run's scores computed in float64

    @property
    def floor_ulps(self) -> float:
        return ulps(self.floor, self.scale)

    def ranked(self, scores):
        """The scores to rank: the float64 ones where measured, else `scores` as they are."""
        return scores if self.float64_scores is None else self.float64_scores

    def as_record(self) -> dict:
        return {"tie_floor": self.floor, "round_off": self.round_off, "objective_scale": self.scale}


def other_precision(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float32 else torch.float32


def measured_floor(spec, engine, data, variant: str, seed: int, scores, chunk=None) -> Floor:
    """The tie floor of a run of `variant` on `engine` (float32 or float64) and `data` whose scores
    were `scores` [n_edges] (run with `seed` and `chunk` examples per pass; the other precision
    takes as many as fit the same bytes), with the float64 scores to rank. Floor() for a method
    without an objective: random and structure-only scores are not computed numerically, and
    rank as they are."""
    if spec.output != "ranking" or spec.objective is None:
        return Floor()
    dtype = engine.w.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"a ranking's tie floor compares float32 with float64; the model is {dtype}")
    other = Engine(engine.w.to(dtype=other_precision(dtype)))
    if chunk:  # the same activation bytes per pass: half the examples in float64, twice in float32
        chunk = max(1, chunk * dtype.itemsize // other.w.dtype.itemsize)
    torch.manual_seed(seed)
    again = torch.as_tensor(spec.run(other, data, variant, seed=seed, chunk=chunk)).detach().double().cpu()
    del other
    mine = torch.as_tensor(scores).detach().double().cpu()
    round_off = float((mine - again).abs().max()) if mine.numel() else 0.0
    scale = spec.objective_scale(engine, data, variant)
    return Floor(tie_floor(round_off, scale), round_off, scale, mine if dtype == torch.float64 else again)
