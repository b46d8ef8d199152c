"""Can two "maximally wrong" targets be told apart? A paired test across tasks and ground truths.

Targets are compared only within one gradient site and one reference (the first rule of this
project). For each (site, reference) the edge AUCs form a table: one row per (task, ground
truth) pair, one column per target. The rows are paired: every target ranks the same edges of
the same model against the same circuit. The Friedman test (scipy.stats.friedmanchisquare) asks
whether any target ranks consistently above the others across rows; where it says so, each
target is compared with the seed's target by the Wilcoxon signed-rank test with Holm's
correction. Rows where every target scores the same carry no information and are counted as such.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

SEED_TARGET = "logit-diff-mse"
ALPHA = 0.05


@dataclass
class TargetComparison:
    site: str
    reference: str
    n_pairs: int  # (task, ground truth) rows where every target has an AUC
    n_tied_pairs: int  # rows where every target scores the same
    means: dict  # target -> mean edge AUC over the rows
    friedman_p: float  # NaN when the test cannot run (fewer than 3 targets or 2 informative rows)
    versus_seed: dict = field(default_factory=dict)  # target -> Holm-adjusted Wilcoxon p against SEED_TARGET

    @property
    def distinguishable(self) -> bool:
        return bool(np.isfinite(self.friedman_p) and self.friedman_p < ALPHA)

    def sentence(self) -> str:
        order = ", ".join(f"{t} {m:.3f}" for t, m in sorted(self.means.items(), key=lambda kv: -kv[1]))
        head = (f"{self.site} site, {self.reference} reference, {self.n_pairs} task/ground-truth pairs "
                f"({self.n_tied_pairs} with every target tied): mean edge AUC {order}. ")
        if self.n_pairs - self.n_tied_pairs < 2 or not np.isfinite(self.friedman_p):
            return head + "Too few informative pairs for a test: the targets cannot be told apart."
        if not self.distinguishable:
            return head + f"Friedman p = {self.friedman_p:.2g}: the targets cannot be told apart."
        better = [t for t, p in self.versus_seed.items() if p < ALPHA]
        detail = ("; vs the seed's target (Wilcoxon, Holm): "
                  + ", ".join(f"{t} p = {p:.2g}" for t, p in sorted(self.versus_seed.items())))
        return head + (f"Friedman p = {self.friedman_p:.2g}: the targets differ" + detail + "."
                       + ("" if better else " No single target differs from the seed's after correction."))


def compare_targets(frame: pd.DataFrame) -> list:
    """`frame`: results rows with task, ground_truth, level, ablation, variant (`<target>/<site>`)
    and auc. Returns one TargetComparison per (site, reference) holding at least 2 targets."""
    gw = frame[(frame["method"] == "grad-wrong") & (frame["level"] == "edge")].dropna(subset=["auc"]).copy()
    if gw.empty:
        return []
    gw["target"] = gw["variant"].str.split("/").str[0]
    gw["site"] = gw["variant"].str.split("/").str[1]
    out = []
    for (site, ref), g in gw.groupby(["site", "ablation"], sort=True):
        table = g.pivot_table(index=["task", "ground_truth"], columns="target", values="auc", aggfunc="first").dropna()
        if table.shape[1] < 2 or table.empty:
            continue
        values = table.to_numpy()
        tied = np.all(values == values[:, :1], axis=1)
        informative = values[~tied]
        p = float("nan")
        if table.shape[1] >= 3 and len(informative) >= 2:
            p = float(stats.friedmanchisquare(*informative.T).pvalue)
        versus = {}
        if np.isfinite(p) and p < ALPHA and SEED_TARGET in table.columns:
            raw = {}
            for t in table.columns:
                if t == SEED_TARGET:
                    continue
                d = table[t] - table[SEED_TARGET]
                raw[t] = 1.0 if np.all(d == 0) else float(stats.wilcoxon(table[t], table[SEED_TARGET]).pvalue)
            versus = dict(zip(raw, _holm(list(raw.values()))))
        out.append(TargetComparison(site, ref, len(table), int(tied.sum()), table.mean().to_dict(), p, versus))
    return out


def _holm(pvalues: list) -> list:
    """Holm's step-down adjustment (controls the family-wise error rate; scipy has no Holm)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()
