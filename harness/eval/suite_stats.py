"""Suite statistics: how methods and "maximally wrong" targets rank many circuits, and whether
the differences between them are larger than noise.

The unit is a circuit: one task's ground truth under one reference. The first rule of the
project holds throughout: every table and test is computed within one reference (`ablation`),
one objective (each method variant is its own row) and one ground truth per circuit, and a
method is called better only when a paired test across circuits says so (Wilcoxon signed-rank,
Holm's correction across the comparisons of one reference) and the bootstrap interval of the
mean difference excludes zero.

Frames crossing modules
-----------------------
`circuit_frame(results)` turns results.csv rows into CIRCUIT_COLUMNS, one row per (reference,
task, method, variant): the trained model's edge AUC against the circuit's ground truth (NaN
when the scorer gave none, e.g. a degenerate ranking), n_edges (the graph's edge count),
n_positive (the circuit's edge count) and, when a task -> depth mapping is given, depth. Every
other public function accepts that frame or raw results rows (converted with the defaults).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from harness.eval.statistics import ALPHA, SEED_TARGET, _holm, compare_targets

CIRCUIT_COLUMNS = ["reference", "task", "ground_truth", "method", "variant", "auc", "n_edges", "n_positive"]
MATCHED = "matched"  # ground_truth argument: pick each task's ground truth by MATCHED_GROUND_TRUTH
# The ground truth matched to a reference, first present wins. structural_gt writes the
# "-zero" / "-ablation" variants only where they differ from "structural"; tasks without a
# structural ground truth (e.g. ACDC's hand-labelled circuits only) fall back to "acdc". SIIT-trained
# models (harness.tasks.trained_tasks) have "correspondence" alone, matched to resample ablation
# only: their strict loss trains off-circuit nodes to be irrelevant under resampling, not zeroing.
MATCHED_GROUND_TRUTH = {"zero": ("structural-zero", "structural", "acdc"),
                        "resample": ("structural-ablation", "structural", "acdc", "correspondence")}
FALLBACK_GROUND_TRUTH = ("structural", "acdc")  # a reference not named above
BASELINE = ("act-patch-edge", "batched")  # exact edge patching: what the gradient methods approximate
NOT_METHODS = ("random", "structure")  # baselines without a model reading: never named the best method
TIE_TOL = 1e-9  # AUCs are float64: a smaller difference is round-off, a tie
N_BOOT = 2000
SEED = 0
# Below 6 pairs the exact two-sided Wilcoxon test cannot reach p < 0.05 (its least p is 2 / 2**n).
MIN_PAIRS = 6


def matched_ground_truth(reference: str, available) -> str | None:
    """The ground truth a circuit is scored against under `reference`: the first of
    MATCHED_GROUND_TRUTH[reference] the task has (None when it has none of them)."""
    have = set(available)
    return next((g for g in MATCHED_GROUND_TRUTH.get(reference, FALLBACK_GROUND_TRUTH) if g in have), None)


def circuit_frame(results: pd.DataFrame, ground_truth: str = MATCHED, depth: dict | None = None,
                  skip_tasks=()) -> pd.DataFrame:
    """CIRCUIT_COLUMNS (+ depth) from results.csv rows: status ok, trained model, edge level, one
    ground truth per (task, reference): MATCHED, or the fixed name `ground_truth` (tasks without
    it are left out). Repeated rows of one key (several seeds) are averaged."""
    ok = results[(results["status"] == "ok") & (results["control"].fillna("trained") == "trained")
                 & (results["level"] == "edge") & ~results["task"].isin(set(skip_tasks))]
    keep = []
    for (task, ref), g in ok.groupby(["task", "ablation"], sort=True):
        gt = matched_ground_truth(ref, g["ground_truth"]) if ground_truth == MATCHED else ground_truth
        keep.append(g[g["ground_truth"] == gt])
    cols = ["ablation", "task", "ground_truth", "method", "variant"]
    if not keep:
        return pd.DataFrame(columns=CIRCUIT_COLUMNS + (["depth"] if depth is not None else []))
    out = (pd.concat(keep).groupby(cols, sort=True)[["auc", "n_edges", "n_positive"]].mean().reset_index()
           .rename(columns={"ablation": "reference"}))[CIRCUIT_COLUMNS]
    if depth is not None:
        out["depth"] = out["task"].map(depth).astype(float)
    return out


def _circuits(frame: pd.DataFrame) -> pd.DataFrame:
    """A circuit frame as is; results rows converted with the defaults (matched ground truth)."""
    return circuit_frame(frame) if "ablation" in frame.columns else frame


def bootstrap_mean_ci(values, n_boot: int = N_BOOT, seed: int = SEED) -> tuple:
    """95% percentile interval of the mean over resampled circuits (NaN below 2 values): the
    spread that another draw of circuits from the same population would give."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float("nan"), float("nan")
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def holm(pvalues) -> list:
    """Holm's adjustment over the finite p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = _holm(p[finite].tolist())
    return out.tolist()


def distribution(frame: pd.DataFrame, n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """One row per (reference, method, variant): n circuits with an AUC, n_na (without one),
    mean / median edge AUC, ci_lo / ci_hi (bootstrap over circuits), share_perfect (AUC == 1).
    Sorted by reference, then mean AUC (highest first)."""
    rows = []
    for (ref, m, v), g in _circuits(frame).groupby(["reference", "method", "variant"], sort=True):
        a = g["auc"].dropna().to_numpy(float)
        lo, hi = bootstrap_mean_ci(a, n_boot, seed)
        rows.append({"reference": ref, "method": m, "variant": v, "n": len(a), "n_na": int(g["auc"].isna().sum()),
                     "mean": a.mean() if len(a) else np.nan, "median": np.median(a) if len(a) else np.nan,
                     "ci_lo": lo, "ci_hi": hi, "share_perfect": float(np.mean(a == 1.0)) if len(a) else np.nan})
    out = pd.DataFrame(rows, columns=["reference", "method", "variant", "n", "n_na", "mean", "median", "ci_lo",
                                      "ci_hi", "share_perfect"])
    return out.sort_values(["reference", "mean"], ascending=[True, False], kind="stable").reset_index(drop=True)


def auc_table(frame: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The circuits of one reference as a table: index (task, ground truth), columns (method,
    variant), values edge AUC. Built once per reference, so many pairs are read from it cheaply."""
    c = _circuits(frame)
    sub = c[c["reference"] == reference]
    return sub.pivot_table(index=["task", "ground_truth"], columns=["method", "variant"], values="auc",
                           aggfunc="first", dropna=False)


def wilcoxon_p(d, tol: float = TIE_TOL) -> tuple:
    """(p, reason): two-sided Wilcoxon signed-rank p of paired differences `d`, differences
    within `tol` counted as zero (dropped, Wilcoxon's convention). All zero: p = 1 (nothing
    differs); fewer than MIN_PAIRS pairs: NaN, since such a test cannot reach significance."""
    d = np.asarray(d, dtype=float)
    if len(d) < MIN_PAIRS:
        return float("nan"), f"too few paired circuits ({len(d)} < {MIN_PAIRS}) for a test"
    nonzero = d[np.abs(d) > tol]  # dropped first, as zero_method="wilcox" would: the same p, and
    if not len(nonzero):         # without zeros scipy's "auto" takes the exact test, not a permutation
        return 1.0, "every circuit tied"
    return float(stats.wilcoxon(nonzero).pvalue), ""


def compare_pair(frame: pd.DataFrame, a: tuple, b: tuple, reference: str, tol: float = TIE_TOL,
                 n_boot: int = N_BOOT, seed: int = SEED, table: pd.DataFrame | None = None) -> dict:
    """`a` (method, variant) against `b` within one reference, over the circuits both have:
    n, wins / ties / losses of a (tie: |ΔAUC| <= tol), mean_diff = mean(a - b) with its
    bootstrap interval diff_lo / diff_hi, Wilcoxon p and, when p is NaN or 1, the reason.
    `table`: auc_table(frame, reference), when the caller has it."""
    t = auc_table(frame, reference) if table is None else table
    col = lambda mv: t[tuple(mv)] if tuple(mv) in t.columns else pd.Series(np.nan, index=t.index)  # noqa: E731
    d = (col(a) - col(b)).dropna().to_numpy(float)
    lo, hi = bootstrap_mean_ci(d, n_boot, seed)
    p, why = wilcoxon_p(d, tol)
    return {"reference": reference, "method": a[0], "variant": a[1], "versus": f"{b[0]} {b[1]}", "n": len(d),
            "wins": int(np.sum(d > tol)), "ties": int(np.sum(np.abs(d) <= tol)), "losses": int(np.sum(d < -tol)),
            "mean_diff": float(d.mean()) if len(d) else np.nan, "diff_lo": lo, "diff_hi": hi, "p": p, "reason": why}


def _with_holm(rows: list) -> pd.DataFrame:
    """p_holm over the rows (one family: one reference), and `significant`: Holm p < ALPHA and
    the interval of the mean difference on one side of zero (noise could not make it)."""
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"])
    clear = (out["diff_lo"] > 0) | (out["diff_hi"] < 0)
    out["significant"] = (out["p_holm"] < ALPHA) & clear
    return out


def compare_methods(frame: pd.DataFrame, baseline: tuple = BASELINE, tol: float = TIE_TOL,
                    n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """Every (method, variant) against `baseline` within each reference holding it: compare_pair's
    columns plus p_holm (Holm across that reference's comparisons) and significant."""
    c = _circuits(frame)
    parts = []
    for ref, sub in c.groupby("reference", sort=True):
        variants = sorted(set(zip(sub["method"], sub["variant"])) - {tuple(baseline)})
        if tuple(baseline) not in set(zip(sub["method"], sub["variant"])):
            continue
        table = auc_table(sub, ref)
        parts.append(_with_holm([compare_pair(sub, mv, baseline, ref, tol, n_boot, seed, table) for mv in variants]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _grad_wrong(c: pd.DataFrame) -> pd.DataFrame:
    """grad-wrong rows with target and site split out of the variant `<target>/<site>`."""
    gw = c[c["method"] == "grad-wrong"].copy()
    gw["target"] = gw["variant"].str.split("/").str[0]
    gw["site"] = gw["variant"].str.split("/").str[1]
    return gw


def target_tests(frame: pd.DataFrame) -> list:
    """statistics.compare_targets (Friedman, then Wilcoxon vs the seed's target with Holm) on the
    circuits: one TargetComparison per (site, reference) with at least 2 targets."""
    c = _circuits(frame)
    return compare_targets(c.rename(columns={"reference": "ablation"}).assign(level="edge"))


def compare_targets_suite(frame: pd.DataFrame, tol: float = TIE_TOL, n_boot: int = N_BOOT,
                          seed: int = SEED) -> pd.DataFrame:
    """One row per (reference, site, target) of sites with 2 or more targets: the target's n /
    mean / ci_lo / ci_hi over circuits, friedman_p of its (site, reference), and against
    SEED_TARGET (NaN for the seed's own row) compare_pair's columns with p_holm across the
    site's targets and significant."""
    c = _circuits(frame)
    gw = _grad_wrong(c)
    omnibus = {(t.site, t.reference): t.friedman_p for t in target_tests(c)}
    parts = []
    for (ref, site), g in gw.groupby(["reference", "site"], sort=True):
        targets = sorted(g["target"].unique())
        if len(targets) < 2:
            continue
        seed_mv = ("grad-wrong", f"{SEED_TARGET}/{site}")
        table = auc_table(g, ref)
        rows = []
        for t in targets:
            a = g.loc[g["target"] == t, "auc"].dropna().to_numpy(float)
            lo, hi = bootstrap_mean_ci(a, n_boot, seed)
            base = {"reference": ref, "site": site, "target": t, "n": len(a), "mean": a.mean() if len(a) else np.nan,
                    "ci_lo": lo, "ci_hi": hi, "friedman_p": omnibus.get((site, ref), np.nan)}
            if t != SEED_TARGET and SEED_TARGET in targets:
                pair = compare_pair(g, ("grad-wrong", f"{t}/{site}"), seed_mv, ref, tol, n_boot, seed, table)
                base.update({k: pair[k] for k in ("wins", "ties", "losses", "mean_diff", "diff_lo", "diff_hi",
                                                  "p", "reason")})
            rows.append(base)
        parts.append(_with_holm(rows) if any("p" in r for r in rows) else pd.DataFrame(rows))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def size_correlation(frame: pd.DataFrame, covariates=("n_edges", "n_positive", "depth")) -> pd.DataFrame:
    """Spearman rho (p, and p_holm across the method variants of one reference and covariate) of
    edge AUC with each covariate present (graph size, circuit size, depth), per (reference,
    method, variant): does a method degrade on larger or deeper circuits? NaN with a note where
    fewer than 3 circuits or a constant column leave no rank."""
    c = _circuits(frame)
    rows = []
    for (ref, m, v), g in c.groupby(["reference", "method", "variant"], sort=True):
        for cov in (x for x in covariates if x in c.columns):
            q = g[["auc", cov]].dropna()
            rho = p = np.nan
            note = ""
            if len(q) < 3:
                note = f"{len(q)} circuits"
            elif q["auc"].nunique() < 2 or q[cov].nunique() < 2:
                note = "constant " + ("AUC" if q["auc"].nunique() < 2 else cov)
            else:
                r = stats.spearmanr(q["auc"], q[cov])
                rho, p = float(r.statistic), float(r.pvalue)
            rows.append({"reference": ref, "method": m, "variant": v, "covariate": cov, "n": len(q),
                         "rho": rho, "p": p, "note": note})
    out = pd.DataFrame(rows, columns=["reference", "method", "variant", "covariate", "n", "rho", "p", "note"])
    out["p_holm"] = np.nan
    for _, idx in out.groupby(["reference", "covariate"]).groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p"])
    return out


def _name(m, v) -> str:
    return m if v in ("", None) else f"{m} {v}"


def _fmt_p(p) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.2g}"


def _fmt_diff(x) -> str:
    """A signed difference to 3 decimals, without a '-0.000' that reads as a loss."""
    return f"{0.0 if abs(x) < 5e-4 else x:+.3f}"


def least_wilcoxon_p(n: int) -> float:
    """The smallest two-sided Wilcoxon p that n pairs can give (all differences of one sign)."""
    return min(1.0, 2.0 / 2 ** n)


def _best_method_sentence(c: pd.DataFrame, ref: str, dist: pd.DataFrame, n_boot: int, seed: int) -> str:
    """The top discovery method/variant by mean AUC in `ref`, and whether its lead over each other
    one survives the paired test (Holm over those comparisons) and the bootstrap interval."""
    d = dist[(dist["reference"] == ref) & ~dist["method"].isin(NOT_METHODS) & (dist["n"] > 0)]
    if d.empty:
        return f"Under the {ref} reference no method has an edge AUC."
    top, table = d.iloc[0], auc_table(c, ref)
    others = [compare_pair(c, (top["method"], top["variant"]), (r["method"], r["variant"]), ref, n_boot=n_boot,
                           seed=seed, table=table) for _, r in d.iloc[1:].iterrows()]
    head = (f"Under the {ref} reference ({int(d['n'].max())} circuits), {_name(top['method'], top['variant'])} has the "
            f"highest mean edge AUC, {top['mean']:.3f} [95% CI {top['ci_lo']:.3f}, {top['ci_hi']:.3f}]")
    if not others:
        return head + "; no other method ran, so nothing is compared."
    t = _with_holm(others)
    tied = t[~(t["significant"] & (t["mean_diff"] > 0))]
    if tied.empty:
        return head + (f", significantly above each of the {len(t)} other method variants (largest Holm-adjusted "
                       f"Wilcoxon p = {_fmt_p(t['p_holm'].max())}).")
    if len(tied) == len(t):
        r = tied.iloc[0]
        return head + (f", but there is no significant difference from any of the {len(t)} other method variants "
                       f"(smallest Holm-adjusted Wilcoxon p = {_fmt_p(t['p_holm'].min())}; vs the runner-up "
                       f"{r['versus']}: difference {_fmt_diff(r['mean_diff'])} [95% CI {_fmt_diff(r['diff_lo'])}, "
                       f"{_fmt_diff(r['diff_hi'])}]), so the suite names no best method."
                       + _small_n(int(t["n"].max()), len(t)))
    names = ", ".join(f"{r['versus']} ({_fmt_diff(r['mean_diff'])}, p = {_fmt_p(r['p_holm'])})"
                      for _, r in tied.head(4).iterrows())
    more = f" and {len(tied) - 4} more" if len(tied) > 4 else ""
    return head + (f"; it is significantly above {len(t) - len(tied)} of the {len(t)} others, but there is no "
                   f"significant difference from {names}{more}, so it is not a clear winner.")


def _small_n(n: int, family: int) -> str:
    """Why nothing can be significant with few circuits: the least p, and with Holm over `family`."""
    least = least_wilcoxon_p(n)
    if least * family < ALPHA:
        return ""
    return (f" With {n} circuits the smallest possible Wilcoxon p is {least:.2g} ({min(1.0, least * family):.2g} "
            f"after Holm over {family} comparisons): more circuits are needed to separate these methods.")


def _baseline_sentence(cmp: pd.DataFrame, ref: str, baseline: tuple) -> str:
    """How many method variants score significantly above / below the baseline in `ref`."""
    t = cmp[(cmp["reference"] == ref) & ~cmp["method"].isin(NOT_METHODS)] if len(cmp) else cmp
    if t.empty:
        return ""
    up = int((t["significant"] & (t["mean_diff"] > 0)).sum())
    down = int((t["significant"] & (t["mean_diff"] < 0)).sum())
    untested = int(t["p"].isna().sum())
    return (f" Against {_name(*baseline)}, {up} method variants score significantly higher, {down} significantly "
            f"lower and {len(t) - up - down - untested} show no significant difference (paired Wilcoxon, Holm)"
            + (f"; {untested} could not be tested (too few circuits with an AUC)." if untested else "."))


def _target_sentence(tc: pd.DataFrame, ref: str) -> str:
    """Per gradient site with competing targets: the top target, the omnibus test, and each
    target's difference from the seed's target where it is significant."""
    out = []
    for site, g in (tc[tc["reference"] == ref].groupby("site", sort=True) if len(tc) else []):
        g = g.sort_values("mean", ascending=False)
        top = g.iloc[0]
        s = (f" Among grad-wrong targets ({site} site, {int(g['n'].max())} circuits), {top['target']} has the highest "
             f"mean, {top['mean']:.3f} [95% CI {top['ci_lo']:.3f}, {top['ci_hi']:.3f}]; ")
        sig = g[g.get("significant", pd.Series(False, index=g.index)).fillna(False).astype(bool)]
        fp = top["friedman_p"]
        if sig.empty:
            s += (f"there is no significant difference between the targets (Friedman p = {_fmt_p(fp)}; none differs "
                  f"from the seed's {SEED_TARGET} after Holm).")
        else:
            s += (f"Friedman p = {_fmt_p(fp)}; significantly different from the seed's {SEED_TARGET}: "
                  + ", ".join(f"{r['target']} ({_fmt_diff(r['mean_diff'])}, Holm p = {_fmt_p(r['p_holm'])})"
                              for _, r in sig.iterrows()) + "; the others show no significant difference.")
        out.append(s)
    return "".join(out)


def suite_answer(frame: pd.DataFrame, baseline: tuple = BASELINE, n_boot: int = N_BOOT, seed: int = SEED,
                 tables: tuple | None = None) -> str:
    """The suite-level answer in one plain-English paragraph: per reference, which method variant
    and which grad-wrong target rank circuits best, with intervals and p-values, and where the
    differences are not significant, that they are not (never a winner on a tie). `tables`:
    (distribution, compare_methods, compare_targets_suite) of the same frame and arguments, when
    the caller has them (else computed)."""
    c = _circuits(frame)
    if c.empty or c["auc"].notna().sum() == 0:
        return "No edge AUCs: nothing to compare."
    dist, cmp, tc = tables or (distribution(c, n_boot, seed), compare_methods(c, baseline, n_boot=n_boot, seed=seed),
                               compare_targets_suite(c, n_boot=n_boot, seed=seed))
    gts = ", ".join(sorted(c["ground_truth"].unique()))
    parts = [f"Each reference is read on its own, each circuit against one ground truth ({gts}); "
             f"a difference counts only when its Holm-adjusted paired Wilcoxon p < {ALPHA} and its 95% bootstrap "
             f"interval excludes zero."]
    for ref in sorted(c["reference"].unique()):
        parts.append(" " + _best_method_sentence(c, ref, dist, n_boot, seed) + _baseline_sentence(cmp, ref, baseline)
                     + _target_sentence(tc, ref))
    return "".join(parts)
