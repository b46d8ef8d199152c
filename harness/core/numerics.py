"""When two numbers are the same number: the tie floor every ranking and its interval share.

A ranking's scores are changes of its method's objective. Two |scores| closer than the floor are a
tie (pairwise, never chained: `harness.eval.scoring.pair_counts`), so round-off never decides a
ranking. The floor is measured, not assumed (`harness.eval.round_off.measured_floor`): the run is
repeated in the other precision (float32 / float64), and the floor is MARGIN times the largest
difference of a score between the two, but never under MIN_ULPS float32 ulps of the objective's
magnitude (a change that small cannot be told from the objective's own round-off in float32).
The float64 ranking is the one scored, so a ranking does not depend on the precision the run
was computed in. A constant floor of 1024 ulps of the objective, calibrated on
tracr's models, tied 58-99.7% of GPT-2's edges, whose scores are small but reproducible
(docs/scoring.md#ties-round-off-and-degenerate-objectives).
"""
from __future__ import annotations

import numpy as np

FLOAT32_EPS = float(np.finfo(np.float32).eps)
MARGIN = 8  # x2: both scores of a pair moved; x4: another machine's kernels round off differently
MIN_ULPS = 1


def ulps(value: float, scale: float) -> float:
    """`value` in float32 ulps of `scale` (inf for a zero scale)."""
    unit = FLOAT32_EPS * abs(float(scale))
    return abs(float(value)) / unit if unit > 0 else float("inf")


def tie_floor(round_off: float, scale: float) -> float:
    """The absolute tie floor of scores whose largest float32-float64 difference is `round_off`,
    for an objective of magnitude `scale`."""
    return max(MARGIN * abs(float(round_off)), MIN_ULPS * FLOAT32_EPS * abs(float(scale)))
