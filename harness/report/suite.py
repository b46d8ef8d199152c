"""The suite section of a report: how every method variant ranks many circuits, drawn and tested.

Figures (one panel per reference; references are never pooled):
- `plot_distribution`: one row per method variant, sorted by mean edge AUC; each circuit's AUC a
  small jittered dot, the mean with its 95% bootstrap interval over circuits a thick bar.
- `plot_wins`: wins / ties / losses of each method variant against the baseline (exact edge
  patching), with the Holm-adjusted Wilcoxon p beside each bar.
- `plot_size`: edge AUC against the graph's edge count (log x) for a handful of method variants.

`suite_items` gives render.py-style blocks (("h2" | "p", str), ("table", DataFrame), ("img",
Path)), which the report renders (harness.report.render). Jitter is drawn from a seeded generator and PNGs carry no timestamp, so
the output is the same for the same input and seed. The statistics are harness.eval.suite_stats.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.eval import suite_stats as S

SEED = 0
PNG_META = {"Software": None}  # no version stamp: the same input gives the same bytes


def _label(m, v) -> str:
    return f"{m} {v}"


def _colors(methods, sns) -> dict:
    """One colour per method, the same in every figure: sorted names onto tab20's 10 dark
    shades first, then its light ones (neighbours stay distinct)."""
    names = sorted(set(methods))
    tab = sns.color_palette("tab20", n_colors=20)
    return dict(zip(names, (tab[0::2] + tab[1::2]) * (1 + len(names) // 20)))


def reference_panels(frame: pd.DataFrame, width: float = 6.2, row_height: float = 0.24, pad: float = 1.4) -> tuple:
    """(plt, sns, fig, axes, refs): one panel per reference of `frame` (references are never
    pooled), side by side, tall enough for the reference with the most rows."""
    from harness.report.render import _plt

    plt, sns = _plt()
    refs = sorted(frame["reference"].unique())
    rows = frame.groupby("reference").size().max()
    fig, axes = plt.subplots(1, len(refs), figsize=(width * len(refs), row_height * rows + pad), squeeze=False)
    return plt, sns, fig, axes, refs


def _save(fig, plt, path: Path) -> None:
    fig.savefig(path, dpi=100, metadata=PNG_META)
    plt.close(fig)


def plot_distribution(frame: pd.DataFrame, path: Path, dist: pd.DataFrame | None = None,
                      baseline: tuple = S.BASELINE, seed: int = SEED) -> bool:
    """Per reference, every method variant's per-circuit AUCs (dots) and mean with 95% CI (bar),
    rows sorted by mean so the order is read top to bottom; the baseline's label in bold."""
    c = S._circuits(frame).dropna(subset=["auc"])
    dist = S.distribution(c) if dist is None else dist
    dist = dist[dist["n"] > 0]
    if dist.empty:
        return False
    plt, sns, fig, axes, refs = reference_panels(dist)
    colors = _colors(dist["method"], sns)
    rng = np.random.default_rng(seed)
    for ax, ref in zip(axes.flat, refs):
        d = dist[dist["reference"] == ref].iloc[::-1].reset_index(drop=True)  # best at the top
        for y, r in d.iterrows():
            a = c[(c["reference"] == ref) & (c["method"] == r["method"]) & (c["variant"] == r["variant"])]["auc"]
            col = colors[r["method"]]
            if (r["method"], r["variant"]) == tuple(baseline):
                ax.axhspan(y - 0.45, y + 0.45, color="0.92", zorder=0)
            if np.isfinite(r["ci_lo"]):
                ax.hlines(y, r["ci_lo"], r["ci_hi"], lw=5, color=col, alpha=0.45, zorder=2)
            ax.scatter(a, y + rng.uniform(-0.25, 0.25, len(a)), s=9, alpha=0.7, color=col, lw=0, zorder=3)
            ax.plot(r["mean"], y, "o", ms=4.5, mfc="white", mec="black", mew=0.8, zorder=4)
        ax.axvline(0.5, ls=":", c="grey", lw=1)
        ax.set_yticks(range(len(d)), [_label(m, v) for m, v in zip(d["method"], d["variant"])], fontsize=7)
        for t, (m, v) in zip(ax.get_yticklabels(), zip(d["method"], d["variant"])):
            t.set_fontweight("bold" if (m, v) == tuple(baseline) else "normal")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.7, len(d) - 0.3), xlabel="edge AUC",
               title=f"{ref} reference ({int(d['n'].max())} circuits)")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("Edge AUC per circuit (dots) and mean with 95% bootstrap CI over circuits (bar, white dot)",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, plt, path)
    return True


def plot_wins(cmp: pd.DataFrame, path: Path, baseline: tuple = S.BASELINE) -> bool:
    """Per reference, each method variant's circuits won / tied / lost against the baseline as a
    stacked bar, sorted by wins - losses, with the Holm-adjusted p (and * where significant)."""
    if cmp is None or cmp.empty:
        return False
    plt, _, fig, axes, refs = reference_panels(cmp)
    parts = (("wins", "#4c9a5b"), ("ties", "#c8c8c8"), ("losses", "#c0504d"))
    for ax, ref in zip(axes.flat, refs):
        d = cmp[cmp["reference"] == ref].assign(net=lambda x: x["wins"] - x["losses"])
        d = d.sort_values(["net", "wins", "method", "variant"], ascending=[True, True, False, False])
        d = d.reset_index(drop=True)  # row y = position, best net at the top
        left = np.zeros(len(d))
        for col, color in parts:
            ax.barh(range(len(d)), d[col], left=left, color=color, label=col, height=0.75)
            left += d[col].to_numpy(float)
        for y, r in d.iterrows():
            mark = "*" if r["significant"] else ""
            text = f"p={S._fmt_p(r['p_holm'])}{mark}" if np.isfinite(r["p_holm"]) else "no test"
            ax.text(left[y] + 0.2, y, text, va="center", fontsize=6)
        ax.set_yticks(range(len(d)), [_label(m, v) for m, v in zip(d["method"], d["variant"])], fontsize=7)
        ax.set(xlim=(0, left.max() * 1.3 + 1), ylim=(-0.7, len(d) - 0.3), xlabel="circuits",
               title=f"vs {_label(*baseline)}, {ref} reference")
        ax.tick_params(axis="x", labelsize=7)
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Wins / ties / losses against the baseline (Holm-adjusted Wilcoxon p; * significant)", fontsize=9)
    fig.tight_layout()
    _save(fig, plt, path)
    return True


def size_methods(dist: pd.DataFrame, baseline: tuple = S.BASELINE, k: int = 2) -> list:
    """A handful of method variants for the size plot: the baseline, the seed's grad-wrong, the
    k discovery variants with the highest mean AUC (averaged over references), and random."""
    d = dist[dist["n"] > 0]
    top = (d[~d["method"].isin(S.NOT_METHODS)].groupby(["method", "variant"])["mean"].mean()
           .sort_values(ascending=False, kind="stable").index.tolist())
    wanted = [tuple(baseline), ("grad-wrong", f"{S.SEED_TARGET}/activation")]
    wanted += [mv for mv in top if mv not in wanted][:k] + [("random", "uniform")]
    have = set(zip(d["method"], d["variant"]))
    return [mv for mv in dict.fromkeys(wanted) if mv in have]


def plot_size(frame: pd.DataFrame, path: Path, methods: list | None = None) -> bool:
    """Per reference, edge AUC against the graph's edge count (log x; each method's dots shifted a
    little along x, so circuits of one graph size do not hide each other) for `methods`
    (default `size_methods`)."""
    from harness.report.render import _plt

    c = S._circuits(frame).dropna(subset=["auc", "n_edges"])
    if c.empty:
        return False
    methods = size_methods(S.distribution(c)) if methods is None else methods
    if not methods:
        return False
    plt, sns = _plt()
    refs = sorted(c["reference"].unique())
    fig, axes = plt.subplots(1, len(refs), figsize=(5.4 * len(refs), 4.0), squeeze=False)
    colors = dict(zip(methods, sns.color_palette("tab10", n_colors=len(methods))))
    ticks = sorted(c["n_edges"].unique())
    for ax, ref in zip(axes.flat, refs):
        for i, mv in enumerate(methods):
            q = c[(c["reference"] == ref) & (c["method"] == mv[0]) & (c["variant"] == mv[1])]
            x = q["n_edges"].to_numpy(float) * np.exp(0.025 * (i - (len(methods) - 1) / 2))
            ax.scatter(x, q["auc"], s=18, alpha=0.75, color=colors[mv], label=_label(*mv), lw=0)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        if len(ticks) <= 12:  # the graph sizes themselves, in plain numbers
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.tick_params(axis="x", labelsize=7)
        ax.axhline(0.5, ls=":", c="grey", lw=1)
        ax.set(ylim=(-0.02, 1.02), xlabel="edges in the graph (log)", ylabel="edge AUC", title=f"{ref} reference")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, plt, path)
    return True


def _ci(mean, lo, hi, signed: bool = False) -> str:
    if not np.isfinite(mean):
        return "n/a"
    f = S._fmt_diff if signed else "{:.3f}".format
    return f(mean) + ("" if not np.isfinite(lo) else f" [{f(lo)}, {f(hi)}]")


def _distribution_table(d: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"method": d["method"], "variant": d["variant"],
                         "circuits": [f"{n}" + (f" (+{k} n/a)" if k else "") for n, k in zip(d["n"], d["n_na"])],
                         "mean [95% CI]": [_ci(*x) for x in zip(d["mean"], d["ci_lo"], d["ci_hi"])],
                         "median": d["median"].round(3), "share AUC = 1": d["share_perfect"].round(2)})


def _paired_table(t: pd.DataFrame, first: list) -> pd.DataFrame:
    """`first` columns, then W/T/L, the mean difference [CI], p and Holm p (bold when significant)."""
    holm = [("n/a" if not np.isfinite(p) else (f"**{p:.2g}**" if s else f"{p:.2g}"))
            for p, s in zip(t["p_holm"], t["significant"].fillna(False))]
    return pd.concat([t[first].reset_index(drop=True), pd.DataFrame({
        "n": t["n"].astype("Int64").to_numpy(),
        "wins/ties/losses": [f"{int(w)}/{int(ti)}/{int(lo)}" if np.isfinite(w) else ""
                             for w, ti, lo in zip(t["wins"], t["ties"], t["losses"])],
        "mean diff [95% CI]": [_ci(*x, signed=True) for x in zip(t["mean_diff"], t["diff_lo"], t["diff_hi"])],
        "Wilcoxon p": [S._fmt_p(p) for p in t["p"]], "Holm p": holm,
        "note": t["reason"].fillna("").to_numpy()})], axis=1)


def _size_table(sc: pd.DataFrame) -> pd.DataFrame:
    """One row per method variant, one 'rho (Holm p)' column per covariate."""
    cell = [("n/a (" + n + ")") if n else f"{r:+.2f} ({S._fmt_p(p)})"
            for r, p, n in zip(sc["rho"], sc["p_holm"], sc["note"])]
    return (sc.assign(cell=cell).pivot_table(index=["method", "variant"], columns="covariate", values="cell",
                                             aggfunc="first").reset_index().rename_axis(columns=None))


DIST_NOTE = ("One circuit per task and reference, scored against one ground truth ({gts}; by default the one matched "
             "to the reference, suite_stats.MATCHED_GROUND_TRUTH). Mean edge AUC over "
             "circuits with a 95% percentile bootstrap interval over circuits ({n_boot} resamples, seed {seed}); "
             "share AUC = 1: circuits ranked perfectly; n/a: circuits where the ranking has no AUC (e.g. every edge "
             "tied). random and structure are baselines, not methods; a structure rule is one fixed rule.")
PAIRED_NOTE = ("Paired over the circuits both have: wins / ties / losses of the row against {versus} (tie: |ΔAUC| ≤ "
               "{tol:g}), the mean difference with its bootstrap interval, the two-sided Wilcoxon signed-rank p (no "
               "test below {min_pairs} circuits, where it cannot reach 0.05) and Holm's adjustment across the rows "
               "of this table. Bold: significant, i.e. Holm p < {alpha} and the interval excludes zero.")


def suite_items(frame: pd.DataFrame, out_dir, baseline: tuple = S.BASELINE, n_boot: int = S.N_BOOT,
                seed: int = SEED) -> list:
    """render.py-style blocks of the suite section: the answer, the distribution (table and dot
    plot), each method against the baseline, grad-wrong targets against the seed's, and AUC
    against size. `frame`: results rows or a suite_stats circuit frame. PNGs go to `out_dir`."""
    out = Path(out_dir)
    c = S._circuits(frame)
    if c.empty or c["auc"].notna().sum() == 0:
        return [("h2", "Suite statistics"), ("p", "No edge AUCs on the trained model: nothing to compare.")]
    dist = S.distribution(c, n_boot, seed)
    cmp = S.compare_methods(c, baseline, n_boot=n_boot, seed=seed)
    tc = S.compare_targets_suite(c, n_boot=n_boot, seed=seed)
    kw = dict(tol=S.TIE_TOL, min_pairs=S.MIN_PAIRS, alpha=S.ALPHA)
    B = [("h2", "Suite statistics: which method ranks circuits best?"),
         ("p", S.suite_answer(c, baseline, n_boot, seed, (dist, cmp, tc))),
         ("h2", "Edge AUC over circuits"),
         ("p", DIST_NOTE.format(gts=", ".join(sorted(c["ground_truth"].unique())), n_boot=n_boot, seed=seed))]
    if plot_distribution(c, out / "suite_distribution.png", dist, baseline, seed):
        B.append(("img", out / "suite_distribution.png"))
    for ref, d in dist.groupby("reference", sort=True):
        B += [("p", f"{ref} reference:"), ("table", _distribution_table(d))]
    if len(cmp):
        B += [("h2", f"Each method against {_label(*baseline)}"),
              ("p", PAIRED_NOTE.format(versus=_label(*baseline), **kw))]
        if plot_wins(cmp, out / "suite_wins.png", baseline):
            B.append(("img", out / "suite_wins.png"))
        for ref, t in cmp.groupby("reference", sort=True):
            t = t.sort_values("mean_diff", ascending=False)
            B += [("p", f"{ref} reference:"), ("table", _paired_table(t, ["method", "variant"]))]
    B += _target_items(tc, kw)
    B += _size_items(c, out)
    return B


def _target_items(tc: pd.DataFrame, kw: dict) -> list:
    """Per (reference, site): each grad-wrong target's mean [CI] and its paired test against the
    seed's target, with the Friedman p of the site (statistics.compare_targets)."""
    if tc.empty:
        return []
    B = [("h2", "grad-wrong targets against the seed's target"),
         ("p", "Within one gradient site and one reference. " + PAIRED_NOTE.format(versus=S.SEED_TARGET, **kw)
          + " Friedman: statistics.compare_targets over the same circuits.")]
    for (ref, site), t in tc.groupby(["reference", "site"], sort=True):
        t = t.sort_values("mean", ascending=False)
        for col in ("wins", "ties", "losses", "mean_diff", "diff_lo", "diff_hi", "p", "p_holm"):
            t[col] = t[col].astype(float) if col in t else np.nan
        t["significant"] = t.get("significant", pd.Series(False, index=t.index)).fillna(False).astype(bool)
        t["reason"] = t.get("reason", pd.Series("", index=t.index)).fillna("")
        t = t.assign(**{"mean [95% CI]": [_ci(*x) for x in zip(t["mean"], t["ci_lo"], t["ci_hi"])]})
        B += [("p", f"{ref} reference, {site} site (Friedman p = {S._fmt_p(t['friedman_p'].iloc[0])}):"),
              ("table", _paired_table(t, ["target", "mean [95% CI]"]))]
    return B


def _size_items(c: pd.DataFrame, out: Path) -> list:
    """AUC against graph size: a scatter for a few method variants and Spearman's rho per variant."""
    sc = S.size_correlation(c)
    if sc.empty:
        return []
    B = [("h2", "Edge AUC against graph and circuit size"),
         ("p", "Spearman's rho of edge AUC with the graph's edge count (n_edges), the circuit's (n_positive)"
               + (" and depth" if "depth" in c else "") + " over circuits, per reference; in brackets the p "
               "Holm-adjusted across the method variants of one reference and covariate. A negative rho: the "
               "method ranks larger circuits worse.")]
    if plot_size(c, out / "suite_size.png"):
        B.append(("img", out / "suite_size.png"))
    for ref, t in sc.groupby("reference", sort=True):
        B += [("p", f"{ref} reference:"), ("table", _size_table(t))]
    return B
