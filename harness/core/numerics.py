"""When two numbers are the same number: the round-off scale every ranking and check shares.

A result must not depend on the precision it was computed in (float32 or float64), so the tie
floor is float32's whatever the run's dtype: TIE_ULPS float32 ulps of the quantity's scale. It
was measured on every offline task and default method (float32 against float64 scores,
docs/scoring.md#ties-round-off-and-degenerate-objectives): the largest |score32 - score64| was 132
ulps of the objective's magnitude; 1024 leaves a margin of about 8 for two scores that both moved.
"""
from __future__ import annotations

import numpy as np

TIE_ULPS = 1024
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def tie_floor(scale: float) -> float:
    """The absolute tie floor for quantities of magnitude `scale`."""
    return TIE_ULPS * FLOAT32_EPS * abs(float(scale))
