"""The report's headline (issue 15, item 2): each method's best variant per task and reference,
first in the report, with the same numbers in summary.json."""
import json
import re

import pandas as pd

from harness.report.headline import headline_frame, primary_ground_truth, summary


def _row(task, method, variant, auc, gt="acdc", ablation="resample", control="trained", level="edge", lo=None, hi=None):
    return {"task": task, "method": method, "variant": variant, "ground_truth": gt, "level": level, "auc": auc,
            "auc_lo": lo, "auc_hi": hi, "pessimistic_auc": auc / 2, "ablation": ablation, "control": control,
            "status": "ok"}


def test_the_best_variant_of_each_method_is_picked_within_one_reference_and_ground_truth():
    df = pd.DataFrame([
        _row("t", "eap", "noising", 0.7), _row("t", "eap", "denoising", 0.9, lo=0.8, hi=0.95),
        _row("t", "eap", "noising", 0.99, ablation="zero"),          # another reference: its own row
        _row("t", "eap", "clean", 1.0, gt="structural"),             # another ground truth: not the headline's
        _row("t", "eap", "reset-best", 1.0, control="reset"),        # a control: never the headline
        _row("t", "eap", "node-best", 1.0, level="node"),
        _row("t", "grad-wrong", "uniform/activation", float("nan")),  # n/a: not a candidate
        _row("t", "grad-wrong", "inverted/activation", 0.6),
        _row("repro", "eap", "noising", 0.1),
    ])
    h = headline_frame(df, skip_tasks={"repro"})
    assert set(h["task"]) == {"t"}
    best = {(r.ablation, r.method): (r.variant, r.n_variants, r.auc) for r in h.itertuples()}
    assert best == {("resample", "eap"): ("denoising", 2, 0.9), ("zero", "eap"): ("noising", 1, 0.99),
                    ("resample", "grad-wrong"): ("inverted/activation", 1, 0.6)}
    s = summary(h)
    assert s["resample"]["t"]["methods"]["eap"] == {"best_variant": "denoising", "of": 2, "auc": 0.9, "auc_lo": 0.8,
                                                    "auc_hi": 0.95, "pessimistic_auc": 0.45}
    assert primary_ground_truth(["structural", "acdc"]) == "acdc" and primary_ground_truth(["b", "a"]) == "a"


def test_the_report_opens_with_the_headline_and_summary_json_holds_it(tmp_path):
    from harness.cli import main

    out = tmp_path / "out"
    assert main(["-q", "run", "--tasks", "tracr-xproportion", "--methods", "eap", "random", "act-patch-edge",
                 "--controls", "trained", "--bootstrap", "0", "--no-faithfulness", "--no-progress",
                 "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    first_image = re.search(r'<img alt="([^"]+)"', html).group(1)
    assert first_image == "headline_resample"
    assert html.index("<h2>Headline") < html.index("<h2>AUC by method")
    got = json.loads((out / "summary.json").read_text())["headline"]
    results = pd.read_csv(out / "results.csv")
    for ref in ("resample", "zero"):
        edge = results[(results["ablation"] == ref) & (results["level"] == "edge") & (results["ground_truth"] == "acdc")]
        for method, grp in edge.groupby("method"):
            assert got[ref]["tracr-xproportion"]["methods"][method]["auc"] == grp["auc"].max()
            assert got[ref]["tracr-xproportion"]["methods"][method]["of"] == grp["variant"].nunique()


def test_auc_tables_give_intervals_their_own_column_and_mark_each_column_s_best():
    from harness.report.tables import auc_table

    df = pd.DataFrame([_row("t", "eap", "noising", 0.7, lo=0.6, hi=0.8), _row("t", "eap", "denoising", 0.9, lo=0.8, hi=0.95),
                       _row("t", "acdc", "sweep", 0.9), _row("t", "random", "uniform", float("nan"))])
    df.loc[3, "note"] = "n/a: every edge scores the same"
    table = auc_table(df, lambda r: f" ({r['note'].removeprefix('n/a: ')})")
    assert list(table.columns) == ["method", "variant", "t (acdc)", "CI", "pess."]
    rows = {(r["method"], r["variant"]): list(r)[2:] for _, r in table.iterrows()}
    assert rows[("eap", "denoising")] == ["**0.900**", "[0.80, 0.95]", "**0.450**"]
    assert rows[("acdc", "sweep")] == ["**0.900**", "", "**0.450**"]  # a tie at the shown decimals: both bold
    assert rows[("eap", "noising")] == ["0.700", "[0.60, 0.80]", "0.350"]
    assert rows[("random", "uniform")][0] == "n/a (every edge scores the same)"


def test_roc_panels_take_each_method_s_best_variant_and_merge_identical_curves():
    from harness.report.roc import best_per_method

    a, b = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0)), ((0.0, 0.5, 1.0), (0.0, 0.5, 1.0))
    curves = [("eap", "noising", 0.75, *b), ("eap", "denoising", 1.0, *a), ("grad-wrong", "uniform/activation", 1.0, *a),
              ("random", "uniform", 0.5, *b)]
    lines = best_per_method(curves)
    assert [ln[0] for ln in lines] == ["eap = grad-wrong (AUC 1.000)", "random (AUC 0.500)"]


def test_the_report_draws_roc_variants_and_faithfulness_for_each_task(tmp_path):
    from harness.cli import main

    out = tmp_path / "out"
    assert main(["-q", "run", "--tasks", "tracr-xproportion", "--methods", "eap", "random", "--controls", "trained",
                 "--bootstrap", "0", "--no-progress", "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    for name in ("roc_tracr-xproportion", "roc_variants_tracr-xproportion", "faithfulness_tracr-xproportion"):
        assert (out / f"{name}.png").stat().st_size > 0 and f'alt="{name}"' in html
