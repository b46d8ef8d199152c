"""Readable reports, rendered from a run directory alone (a pure function of its files).

`render(out_dir)` writes `report.md`, a self-contained `report.html` (images embedded) and
`summary.json`, with, in order: the headline (each method's best variant per task and reference,
`headline`), AUC tables (method x task, edge and node level, interval and pessimistic AUC in their
own columns, each column's best in bold), the controls, the published ACDC/SP/HISP AUCs beside
ours, a chart of AUC per `grad-wrong` target, then per task its ROC curves (`roc`: one per method,
and every variant), its circuit drawings against the ground truth (`circuits`: Graphviz SVG inline,
PNG beside the report) and layer x head map of node scores (`head_scores`), faithfulness curves
(`faithfulness`), the timing section when `timing.csv`
is present, and the run's metadata. The document is a list of blocks rendered twice.
"""
from __future__ import annotations

import base64
import html
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core.graph import node_place
from harness.eval.statistics import compare_targets
from harness.report.faithfulness import plot_faithfulness
from harness.report.headline import primary_ground_truth
from harness.report.published import SOURCE as PUBLISHED_SOURCE
from harness.report.published import published_frame
from harness.report.positions import CAPTION as POSITIONS_CAPTION
from harness.report.positions import plot_position_shares
from harness.report.roc import CAPTION as ROC_CAPTION
from harness.report.roc import plot_roc, plot_roc_variants
from harness.report.tables import TableError, auc_table, read_table
from harness.report.timing_plot import plot_timing
from harness.run.store import ResultStore
from harness.tasks import TASKS

# Tasks that re-run another task's circuit on the paper's inputs: shown, not counted again in the headline test.
REPRODUCTION_ONLY = {name for name, cls in TASKS.items() if getattr(cls, "reproduction_only", False)}

AUC_NOTE = ("AUC: scikit-learn ROC AUC of |score| (ties count 1/2). Pess.: ACDC's pessimistic staircase AUC over "
            "Pareto points with tied edges entering together (docs/scoring.md#pessimistic-auc-and-pareto-filter). "
            "Brackets: 95% percentile interval over at least 1,000 bootstrap resamples of the examples; it is "
            "conditional on the clean/corrupted pairing (pairs are resampled, the pairing drawn once is held fixed), "
            "so it does not cover a different draw of corrupted prompts. Methods that must re-run per resample "
            "(ACDC) have no interval unless allowed 1,000 re-runs (--bootstrap-reruns). random: the mean over 20 "
            "seeds, its brackets the spread over seeds. \u2020 marks an estimate outside its interval. Two scores closer "
            "than the run's tie floor (8 x the largest float32-float64 difference of its scores on 4 examples, at least "
            "1 float32 ulp of the objective; results.csv tie_floor) tie, counting 1/2 in the AUC and 0 in Pess. "
            "(docs/scoring.md#ties-round-off-and-degenerate-objectives). "
            "Node scores: the largest |score| of a node's edges.")


REFERENCE_NOTE = ("Every result is measured against one reference (the source patched from: resample = the "
                  "corrupted prompts, on tracr tasks with ACDC's permutation of their positional embeddings; zero = "
                  "ACDC's zero ablation), and results are compared only within one reference: each table below "
                  "holds one. grad-wrong's activation site takes its gradient x activation difference against the "
                  "same source; its weight sites have no source and appear under the zero reference only.")


def _reason(row) -> str:
    """' (why)' for an n/a cell: the scorer's note without its 'n/a: ' prefix."""
    note = row.get("note")
    return f" ({str(note).removeprefix('n/a: ')})" if isinstance(note, str) and note else ""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def plot_controls(frame: pd.DataFrame, path: Path) -> bool:
    """Trained edge AUC against reset-network AUC (with its spread), one point per method
    variant, task and ground truth; above the diagonal means above the control."""
    sub = frame[(frame["level"] == "edge") & frame["reset_auc"].notna() & frame["auc"].notna()]
    if sub.empty:
        return False
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    methods = sorted(sub["method"].unique())
    for color, m in zip(sns.color_palette(n_colors=len(methods)), methods):
        q = sub[sub["method"] == m]
        ax.errorbar(q["reset_auc"], q["auc"], xerr=[(q["reset_auc"] - q["reset_lo"]).clip(lower=0),
                                                    (q["reset_hi"] - q["reset_auc"]).clip(lower=0)],
                    fmt="o", ms=3.5, lw=0.6, alpha=0.75, color=color, label=m)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="AUC on reset networks (mean, spread)", ylabel="AUC on the trained model",
           title=f"Trained vs reset-network edge AUC ({sub['ablation'].iloc[0]} reference)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_targets(df: pd.DataFrame, path: Path) -> bool:
    """Edge AUC of every grad-wrong target, per task and ground truth, with bootstrap intervals."""
    sub = df[(df["method"] == "grad-wrong") & (df["level"] == "edge")].dropna(subset=["auc"]).copy()
    if sub.empty:
        return False
    sub["target"] = sub["variant"].str.split("/").str[0]
    sub["site"] = sub["variant"].str.split("/").str[1]
    panels = sorted(sub.groupby(["task", "ground_truth"]).groups)
    plt, sns = _plt()
    ncol = min(3, len(panels))
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.6 * nrow), squeeze=False)
    sites = sorted(sub["site"].unique())
    targets = list(dict.fromkeys(sub["target"]))
    colors = sns.color_palette(n_colors=len(sites))
    width = 0.8 / len(sites)
    for ax, (task, gt) in zip(axes.flat, panels):
        p = sub[(sub["task"] == task) & (sub["ground_truth"] == gt)]
        for j, site in enumerate(sites):
            q = p[p["site"] == site].set_index("target").reindex(targets)
            x = np.arange(len(targets)) + (j - (len(sites) - 1) / 2) * width
            lo = (q["auc"] - q["auc_lo"]).clip(lower=0).fillna(0)
            hi = (q["auc_hi"] - q["auc"]).clip(lower=0).fillna(0)
            ax.bar(x, q["auc"], width, color=colors[j], label=site, yerr=[lo, hi], capsize=2)
        ax.axhline(0.5, ls=":", c="grey", lw=1)
        ax.set_xticks(range(len(targets)), targets, rotation=35, ha="right", fontsize=7)
        ax.set(ylim=(0, 1.02), ylabel="edge AUC", title=f"{task} ({gt} GT)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, title="gradient site", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# Drawn against the ground truth per task: the method under study and its exact, matched baseline.
CIRCUIT_METHODS = ("grad-wrong", "act-patch-edge")
# Not in the head maps: scores that measure nothing in the model (a seeded draw, a rule of position).
NOT_MAPPED = ("random", "structure")


class NothingToReport(ValueError):
    """A folder without records or timing rows."""


def _meta(out: Path) -> dict:
    p = out / "meta.json"
    if not p.exists():
        return {}
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        meta = None
        why = f"{type(e).__name__}"
    if isinstance(meta, dict):
        return meta
    warnings.warn(f"ignoring {p}: {why if meta is None else 'not a JSON object'} (the report has no run settings)",
                  stacklevel=3)
    return {}


SUITE_PREFIX = "suite:"


def _blocks(out: Path) -> list:
    store = ResultStore(out)
    records = store.records()
    df = full = store.frame()
    meta = _meta(out)
    B = [("h1", "circuit-bench report")]
    suite = sorted(t for t in (df["task"].unique() if len(df) else []) if str(t).startswith(SUITE_PREFIX))
    if suite:  # the generated suite: its statistics over circuits, not a section per program
        B += _suite_section(df[df["task"].isin(suite)], out, meta)
        df = df[~df["task"].isin(suite)]
        records = [r for r in records if r["task"] not in suite]
    if len(df):
        B += _headline_blocks(df, out)
    B += _trained_blocks(full, out)
    if meta:
        B.append(("p", "; ".join(f"{k}: {v}" for k, v in meta.items() if not isinstance(v, dict))))
        for k, v in meta.items():
            if isinstance(v, dict) and k != "layers":
                B.append(("p", f"{k}: " + ", ".join(f"{a} {b}" for a, b in v.items())))
    B.append(("p", AUC_NOTE))
    ok = df[df["status"] == "ok"] if len(df) else df
    with_controls = ok
    if len(ok):
        ok = ok[ok["control"].fillna("trained") == "trained"]  # reset controls: their own section
        B += _faithfulness_blocks(df[df["control"].fillna("trained") == "trained"])
        # rows with an AUC, and rows whose AUC is n/a for a stated reason (shown as such)
        ok = ok[ok["auc"].notna() | ok["note"].fillna("").astype(str).str.len().gt(0)]
    if len(ok):
        B.append(("p", REFERENCE_NOTE))
        for ref, by_ref in ok.groupby("ablation", sort=True):
            for level in ("edge", "node"):
                table = auc_table(by_ref[by_ref["level"] == level], _reason)
                B += [("h2", f"AUC by method and task: {ref} reference, {level} level"),
                      ("p", "Per task (ground truth): AUC, its 95% interval (CI), ACDC's pessimistic AUC (pess.); "
                            "bold: the best in its column (to the 3 decimals shown)."),
                      ("table", table)]
        B += _control_blocks(with_controls, out)
        pub = published_frame()
        ablations = set(ok["ablation"].dropna())
        pub = pub[pub["task"].isin(set(ok["task"])) & pub["ablation"].isin(ablations) & (pub["metric"] == "Loss")]
        if len(pub):
            ours = ok[(ok["ground_truth"] == "acdc")]
            group = ["task", "ablation", "level", "method"]
            best = ours.sort_values("pessimistic_auc", ascending=False).groupby(group).head(1)
            n_variants = ours.groupby(group)["variant"].nunique()
            rows = []
            for (task, abl), grp in pub.groupby(["task", "ablation"]):
                row = {"task": task, "ablation": abl}
                for _, p in grp.iterrows():
                    row[f"{p['method']} ({p['level'][0].upper()}) [paper]"] = f"{p['auc']:.3f}"
                mine = best[(best["task"] == task) & (best["ablation"] == abl)].sort_values(["level", "method"])
                for _, o in mine.iterrows():
                    n = int(n_variants[(o["task"], o["ablation"], o["level"], o["method"])])
                    row[f"{o['method']} ({o['level'][0].upper()}) [ours]"] = (
                        f"{o['pessimistic_auc']:.3f}" + (f" (best of {n})" if n > 1 else ""))
                rows.append(row)
            B += [("h2", "Published AUCs beside ours"),
                  ("p", f"Paper: {PUBLISHED_SOURCE}, task metric ('Loss') rows. Ours: pessimistic AUC against the same "
                        "ACDC ground truth, best variant of each method (of N where N > 1). tracr-xproportion's "
                        "data is encoded correctly (BOS + tokens), unlike ACDC's, so its numbers need not match; "
                        "tracr-xproportion-acdc runs on ACDC's inputs: its zero row reproduces Table 3; its resample "
                        "row gives 0.600 / 0.727 unscrambled (0.900 / 1.000 scrambled), which is what ACDC's own stored "
                        "ROC points for that row give, while the paper prints 0.679 / 0.750 "
                        "(docs/scoring.md#table-2-random-ablation). "
                        "tracr-reverse under resample: Table 2's 0.200 / 0.312 is what ACDC gets from an unscrambled "
                        "corrupted run (--no-position-scramble); with ACDC's position scramble (the default, and "
                        "ACDC's code) it gets 0.600 / 0.750, for every derangement of the six prompts "
                        "(tests/test_paper_tables.py)."),
                  ("table", pd.DataFrame(rows))]
        for ref, by_ref in ok.groupby("ablation", sort=True):
            png = out / f"targets_{ref}.png"
            if not plot_targets(by_ref, png):
                continue
            gw = by_ref[(by_ref["method"] == "grad-wrong") & (by_ref["level"] == "edge")]
            degenerate = sorted({v.split("/")[0] for v, a in zip(gw["variant"], gw["auc"]) if pd.isna(a)})
            B += [("h2", f"Which maximally wrong answer ranks the circuit best? ({ref} reference)"),
                  ("p", "Targets are compared only within one gradient site and one reference, paired over "
                        "tasks and ground truths (Friedman test; Wilcoxon against the seed's logit-diff-mse "
                        "target with Holm's correction where Friedman finds a difference).")]
            headline = by_ref[~by_ref["task"].isin(REPRODUCTION_ONLY)]  # not the same circuit counted twice
            B += [("p", c.sentence()) for c in compare_targets(headline)]
            if degenerate:
                B.append(("p", "Not ranked on some task (degenerate: every edge scores the same within the tie "
                               "floor; see each task's table): " + ", ".join(degenerate) + "."))
            B.append(("img", png))
        if not suite:
            B += _suite_blocks(ok, out)
    chosen = _best_variants(df)
    for task in sorted({r["task"] for r in records}):
        trecs = [r for r in records if r["task"] == task and r.get("status") == "ok"
                 and r.get("control", "trained") == "trained"]
        B.append(("h2", f"Task {task}"))
        info = meta.get("tasks", {}).get(task) if isinstance(meta.get("tasks"), dict) else None
        n_ex = sorted({r.get("n_examples") for r in trecs if r.get("n_examples")})
        desc = f"{len(trecs)} runs on {', '.join(map(str, n_ex))} examples." if trecs else "no successful runs."
        if info:
            desc = f"{info} " + desc
        B.append(("p", desc))
        gt_problems = {k: v for r in trecs for k, v in (r.get("ground_truth_problems") or {}).items()}
        if gt_problems:
            B.append(("p", "Ground truth left out (the file cannot be used): "
                      + "; ".join(f"{k}: {v}" for k, v in sorted(gt_problems.items())) + "."))
        if trecs and not any(r.get("rows") for r in trecs):
            B.append(("p", "This task has no ground-truth circuit, so it has scores but no AUC."))
        plt, sns = _plt()
        png = out / f"roc_{task}.png"
        if plot_roc(trecs, task, png, plt, sns):
            B += [("p", ROC_CAPTION), ("img", png)]
            gts = sorted({r["ground_truth"] for rec in trecs for r in rec.get("rows", [])})
            variants_png = out / f"roc_variants_{task}.png"
            if gts and plot_roc_variants(trecs, task, primary_ground_truth(gts), variants_png, plt, sns):
                B.append(("img", variants_png))
        B += _circuit_blocks(task, trecs, chosen, store, out)
        png = out / f"positions_{task}.png"
        if plot_position_shares(trecs, task, png, plt):
            B += [("p", POSITIONS_CAPTION), ("img", png)]
        png = out / f"faithfulness_{task}.png"
        if plot_faithfulness(trecs, task, png, plt, sns):
            B += [("p", "Faithfulness f(k) of each method's variant with the highest CPR: the task metric with the "
                        "top-k edges kept and the rest patched from the reference, normalised so 1 is the model and 0 "
                        "everything patched."), ("img", png)]
        bad = [r for r in records if r["task"] == task and r.get("status") != "ok"]
        if bad:
            B.append(("table", pd.DataFrame([{"method": r["method"], "variant": r["variant"], "status": r.get("status"), "error": r.get("error")} for r in bad])))
    timing = out / "timing.csv"
    if timing.exists():
        try:
            t = read_table(timing, "timing")
        except TableError as e:
            warnings.warn(f"no speed section: {e}", stacklevel=2)
            return B
        B += [("h2", "Speed"), ("p", "Seconds per method on random weights of the real configurations (timing does not "
                                      "depend on weight values). ratio_to_fwd_bwd: seconds / one plain forward+backward "
                                      "of the same model and batch. 'extrapolated' rows time a sample of edges and scale "
                                      "to all edges.")]
        cols = [c for c in ["model", "method", "variant", "device", "batch", "seq_len", "seconds", "peak_mem_mb",
                            "ratio_to_fwd_bwd", "speedup_vs_act_patch", "extrapolated"] if c in t.columns]
        B.append(("table", t[cols].round(4)))
        png = out / "timing.png"
        plt, sns = _plt()
        if plot_timing(t, png, plt, sns):
            B.append(("img", png))
        from harness.report.timing_text import targets_text_for

        notes = targets_text_for(out)
        if notes:
            B.append(("p", notes))
    return B


def _headline_blocks(df: pd.DataFrame, out: Path) -> list:
    """First in the report: each method's best variant per task and reference (figure), and the
    same numbers in `summary.json`."""
    from harness.report.headline import headline_frame, plot_headline, write_summary

    if not len(df):
        return []
    frame = headline_frame(df, REPRODUCTION_ONLY)
    write_summary(frame, out / "summary.json")
    B = []
    for ref in sorted(frame["ablation"].unique()):
        png = out / f"headline_{ref}.png"
        plt, sns = _plt()
        if plot_headline(frame, ref, png, plt, sns):
            B += [("h2", f"Headline: each method's best variant, {ref} reference"),
                  ("p", "Edge AUC of each method's best variant on the trained model (\"best of N\": the highest of "
                        "its N variants, so a method with many variants is favoured), with its 95% bootstrap "
                        "interval; grey band: random's spread over 20 seeds; dashed: exact edge patching; dotted: "
                        "ACDC. One ground truth per task (ACDC's where it has one), headline tasks only. structure's "
                        "best rule is chosen with the ground truth, so its dot is an upper bound on what structure "
                        "alone gives, not a method's result. The tables below give every variant; summary.json holds "
                        "these numbers."),
                  ("img", png)]
    return B


def _best_variants(df: pd.DataFrame) -> dict:
    """(task, reference, method) -> its best variant by edge AUC on the task's primary ground
    truth (the headline's choice, reproduction tasks included)."""
    from harness.report.headline import headline_frame

    if not len(df):
        return {}
    return {(r.task, r.ablation, r.method): r.variant for r in headline_frame(df).itertuples()}


def _circuit_blocks(task: str, trecs: list, chosen: dict, store: ResultStore, out: Path) -> list:
    """The task's circuit drawings (CIRCUIT_METHODS against the primary ground truth, per
    reference) and its layer x head map of every ranking method's node scores."""
    from harness.report.circuits import CAPTION, INSTALL_DOT, MAX_DRAWN_EDGES, draw_circuit
    from harness.report.head_scores import CAPTION as MAP_CAPTION
    from harness.report.head_scores import head_scores, plot_head_scores, touched_slots

    edges = store.edge_file(task) or {}
    truths = edges.get("ground_truth") or {}
    if not truths:
        return []
    endpoints = [tuple(e) for e in edges["edges"]]
    gt = primary_ground_truth(truths)
    gt_edges = truths[gt]
    places = [node_place(n) for e in endpoints for n in e]
    n_layers = 1 + max(p.layer for p in places)
    n_heads = 1 + max(p.head for p in places if p.head is not None)
    mlp = any(p.role == "mlp_out" for p in places)
    ranked = {(r["ablation"], r["method"], r["variant"]): r for r in trecs if r.get("scores") is not None}
    drawings, panels, too_big = [], {}, []
    for (t, ref, method), variant in sorted(chosen.items()):
        rec = ranked.get((ref, method, variant))
        if t != task or rec is None or method in NOT_MAPPED:
            continue
        panels[(ref, method)] = (variant, head_scores(endpoints, rec["scores"], n_layers, n_heads, mlp))
        if method in CIRCUIT_METHODS:
            stem = out / f"circuit_{task}_{ref}_{method}"
            d = draw_circuit(endpoints, rec["scores"], gt_edges, stem, f"{task}: {method} {variant} ({ref} reference)",
                             floor=float(rec.get("tie_floor") or 0.0))
            (drawings.append(d) if d is not None else too_big.append(f"{method} ({ref})"))
    B = []
    if drawings or too_big:
        B += [("p", f"{CAPTION} Ground truth: {gt} ({len(gt_edges)} edges).")]
    if too_big:
        B.append(("p", f"Not drawn (over {MAX_DRAWN_EDGES} edges to draw, too many to read): {', '.join(too_big)}; "
                       "the layer x head map below shows where their scores sit."))
    if drawings and any(d.svg is None for d in drawings):
        B.append(("p", f"{INSTALL_DOT} ({', '.join(d.dot_path.name for d in drawings)})."))
    elif drawings:
        B.append(("drawings", drawings))
    plt, sns = _plt()
    png = out / f"head_scores_{task}.png"
    if plot_head_scores(panels, touched_slots(endpoints, gt_edges, n_heads), n_heads, mlp,
                        f"{task}: node scores per layer and head\n({gt} ground truth boxed)", png, plt, sns):
        B += [("p", MAP_CAPTION), ("img", png)]
    return B


def _control_blocks(ok: pd.DataFrame, out: Path) -> list:
    """Each method's AUC beside its reset control and the best structure-only rule."""
    from harness.report.controls import NOT_ABOVE_RESET, NOT_ABOVE_STRUCTURE, control_frame, control_tables

    B = []
    frame = control_frame(ok)
    for ref, table, ranked in control_tables(frame, REPRODUCTION_ONLY):
        B += [("h2", f"Controls: AUC − reset-network AUC, {ref} reference, edge level"),
              ("p", f"Each cell: the method's AUC on the trained model − its mean AUC on reset networks "
                    f"(harness/core/reset.py; tracr: random models of the same shape; interval: their spread) = the "
                    f"difference. A cell \"n/a − reset [spread] (kind)\" has a control but no trained AUC: the "
                    f"trained ranking is n/a (its reason is in the AUC tables), or the trained weights are absent and "
                    f"the control ran on randomly initialised models of the architecture (kind init; "
                    f"harness/core/initialised.py). {NOT_ABOVE_RESET}: not above the reset spread's upper end; {NOT_ABOVE_STRUCTURE}: the "
                    f"95% interval's lower end not above the best structure-only rule (first row: that rule and its "
                    f"AUC, chosen with the ground truth, so an upper bound on what structure alone gives). A cell "
                    f"without a difference has no reset control (ACDC runs one only when asked, "
                    f"--controls trained reset)."),
              ("table", table)]
        if len(ranked):
            B += [("p", "Methods ranked by their mean difference over tasks and ground truths (headline tasks only), "
                        "with how many of those results clear each control:"),
                  ("table", ranked)]
        png = out / f"controls_{ref}.png"
        if plot_controls(frame[(frame["ablation"] == ref) & (frame["method"] != "structure")], png):
            B.append(("img", png))
    return B


def _suite_blocks(ok: pd.DataFrame, out: Path) -> list:
    """Suite statistics over the run's tasks (harness/report/suite.py), where there are enough
    headline tasks for a paired test across circuits to reach significance."""
    from harness.eval.suite_stats import MIN_PAIRS
    from harness.report.suite import suite_items

    headline = ok[~ok["task"].isin(REPRODUCTION_ONLY)]
    return suite_items(headline, out) if headline["task"].nunique() >= MIN_PAIRS else []


def _trained_blocks(rows: pd.DataFrame, out: Path) -> list:
    """Compiled versus SIIT-trained AUC where the run has both sides of a program
    (harness/report/trained.py)."""
    from harness.report.trained import trained_items

    return trained_items(rows, out) if len(rows) else []


def _suite_section(rows: pd.DataFrame, out: Path, meta: dict) -> list:
    """The generated suite's section (docs/suite.md): per-method AUC over its circuits, paired
    tests, targets, and AUC against graph size, circuit size and depth (the model's layers)."""
    from harness.eval.suite_stats import circuit_frame
    from harness.report.suite import suite_items

    layers = meta.get("layers") if isinstance(meta.get("layers"), dict) else {}
    frame = circuit_frame(rows, depth=layers or None)
    n = rows["task"].nunique()
    return [("p", f"The generated suite: {n} compiled circuits (docs/suite.md); each reference is scored against the "
                  "ground truth matched to it.")] + suite_items(frame, out)


def _faithfulness_blocks(df: pd.DataFrame) -> list:
    """CPR / CMD per method and task (no ground truth needed, so Induction is here too)."""
    if "cpr" not in df or df["cpr"].isna().all():
        return []
    sub = df[df["status"] == "ok"].drop_duplicates(["task", "method", "variant"]).dropna(subset=["cpr"])
    rows = []
    for (m, v), grp in sub.groupby(["method", "variant"], sort=True):
        row = {"method": m, "variant": v}
        for _, r in grp.iterrows():
            row[r["task"]] = f"{r['cpr']:.3f} / {r['cmd']:.3f}"
        rows.append(row)
    return [("h2", "Faithfulness of the top-k circuits (CPR higher is better / CMD lower is better)"),
            ("p", "f(k) = (m(top-k edges kept, the rest patched) - m(all patched)) / (m(model) - m(all patched)) "
                  "at 0.1% ... 100% of edges; CPR = area under f, CMD = area under |1 - f| (MIB, Mueller et al. 2025)."),
            ("table", pd.DataFrame(rows))]


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


def render(out_dir) -> Path:
    """Write `out_dir`/report.md and report.html; NothingToReport (a ValueError, one line) when the
    folder is missing or holds neither records nor timing rows."""
    out = Path(out_dir)
    if not out.is_dir():
        raise NothingToReport(f"{out} is not a folder" + ("" if out.exists() else " (it does not exist)")
                              + "; give the --out folder of a run")
    if not ResultStore(out).records() and not (out / "timing.csv").exists():
        raise NothingToReport(f"nothing to report in {out}: no result records or timing.csv "
                              f"(run `circuit-bench run --out {out}` or `circuit-bench bench --out {out}` first)")
    blocks = _blocks(out)
    md, body = [], []
    for kind, x in blocks:
        if kind == "h1":
            md.append(f"# {x}\n")
            body.append(f"<h1>{html.escape(x)}</h1>")
        elif kind == "h2":
            md.append(f"## {x}\n")
            body.append(f"<h2>{html.escape(x)}</h2>")
        elif kind == "p":
            md.append(f"{x}\n")
            body.append(f"<p>{html.escape(x)}</p>")
        elif kind == "table":
            md.append(_md_table(x) + "\n")
            body.append(re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", x.to_html(index=False, border=0, na_rep="")))
        elif kind == "drawings":
            md.extend(f"![{d.png_path.stem}]({d.png_path.name})\n" for d in x)
            body.append('<div class="circuits">' + "".join(f"<figure>{d.svg}</figure>" for d in x) + "</div>")
        elif kind == "img":
            md.append(f"![{x.stem}]({x.name})\n")
            data = base64.b64encode(x.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(x.stem)}" src="data:image/png;base64,{data}">')
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}.circuits{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"
             ".circuits figure{margin:0}.circuits svg{max-width:560px;height:auto}")
    (out / "report.html").write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>circuit-bench report</title>"
                                     f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n",
                                     encoding="utf-8")
    return out / "report.md"
