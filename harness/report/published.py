"""Published AUCs to show beside ours: Conmy et al. 2023 (ACDC paper, arXiv 2304.14997),
Appendix E, Table 2 (random/resample ablation) and Table 3 (zero ablation), as quoted in
docs/scoring.md#published-tables "Loss" is the task metric (IOI logit difference, Docstring its metric,
Greater-Than probability difference, tracr L2); (E) edge-level, (N) node-level ROC.
"""
from __future__ import annotations

import pandas as pd

_TASKS = ["docstring", "greaterthan", "ioi"]
# (metric, task) -> ACDC(E), HISP(E), SP(E), ACDC(N), HISP(N), SP(N)
TABLE2_RESAMPLE = {
    ("KL", "docstring"): (0.982, 0.805, 0.937, 0.950, 0.881, 0.928),
    ("KL", "greaterthan"): (0.853, 0.693, 0.806, 0.890, 0.642, 0.827),
    ("KL", "ioi"): (0.869, 0.789, 0.823, 0.880, 0.668, 0.842),
    ("Loss", "docstring"): (0.972, 0.821, 0.942, 0.938, 0.889, 0.941),
    ("Loss", "greaterthan"): (0.461, 0.706, 0.812, 0.766, 0.631, 0.811),
    ("Loss", "ioi"): (0.589, 0.836, 0.707, 0.777, 0.728, 0.797),
    ("Loss", "tracr-xproportion"): (0.679, 0.679, 0.525, 0.750, 0.909, 0.818),
    ("Loss", "tracr-reverse"): (0.200, 0.577, 0.193, 0.312, 0.750, 0.375),
}
TABLE3_ZERO = {
    ("KL", "docstring"): (0.906, 0.805, 0.428, 0.837, 0.881, 0.420),
    ("KL", "greaterthan"): (0.701, 0.693, 0.163, 0.887, 0.642, 0.134),
    ("KL", "ioi"): (0.539, 0.792, 0.486, 0.458, 0.671, 0.605),
    ("Loss", "docstring"): (0.929, 0.821, 0.482, 0.825, 0.889, 0.398),
    ("Loss", "greaterthan"): (0.491, 0.706, 0.639, 0.783, 0.631, 0.522),
    ("Loss", "ioi"): (0.447, 0.836, 0.393, 0.424, 0.728, 0.479),
    ("Loss", "tracr-xproportion"): (1.000, 0.679, 0.829, 1.000, 0.909, 1.000),
    ("Loss", "tracr-reverse"): (1.000, 0.577, 0.801, 1.000, 0.750, 1.000),
}
SOURCE = "Conmy et al. 2023, Appendix E Tables 2 (resample) and 3 (zero ablation); pessimistic AUC vs ACDC ground truth"


# The harness task run on ACDC's own inputs, beside the one with corrected inputs.
SAME_PAPER_ROW = {"tracr-xproportion-acdc": "tracr-xproportion"}


def published_frame() -> pd.DataFrame:
    rows = []
    for ablation, table in (("resample", TABLE2_RESAMPLE), ("zero", TABLE3_ZERO)):
        for (metric, task), vals in table.items():
            names = [task] + [ours for ours, paper in SAME_PAPER_ROW.items() if paper == task]
            for (method, level), v in zip([(m, l) for l in ("edge", "node") for m in ("ACDC", "HISP", "SP")], vals):
                for name in names:
                    rows.append({"task": name, "ablation": ablation, "metric": metric, "method": method, "level": level, "auc": v})
    return pd.DataFrame(rows)
