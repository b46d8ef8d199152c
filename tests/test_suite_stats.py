"""Suite statistics on synthetic frames whose answer is known, and once on the shipped baseline run."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.eval import suite_stats as S

BASELINE_CSV = Path(__file__).resolve().parents[1] / "reports" / "baseline" / "results.csv"


def rows(aucs: dict, ref="zero", gt="structural", n_edges=None, n_positive=None) -> pd.DataFrame:
    """results.csv-like edge rows: aucs maps (method, variant) -> one AUC per circuit (task i)."""
    out = []
    for (m, v), vals in aucs.items():
        for i, a in enumerate(vals):
            out.append({"task": f"suite:t{i:02d}", "method": m, "variant": v, "ground_truth": gt, "level": "edge",
                        "auc": a, "ablation": ref, "control": "trained", "status": "ok",
                        "n_edges": (n_edges[i] if n_edges is not None else 40),
                        "n_positive": (n_positive[i] if n_positive is not None else 10)})
    return pd.DataFrame(out)


BASE = np.random.default_rng(1).uniform(0.55, 0.9, size=30)


def test_better_on_every_circuit_wins_every_circuit():
    f = rows({("a", "x"): BASE + 0.05, ("b", "y"): BASE})
    r = S.compare_pair(f, ("a", "x"), ("b", "y"), "zero")
    assert (r["n"], r["wins"], r["ties"], r["losses"]) == (30, 30, 0, 0)
    assert r["p"] < 0.001 and r["mean_diff"] == pytest.approx(0.05)
    assert r["diff_lo"] > 0


def test_identical_methods_tie_with_p_one():
    f = rows({("a", "x"): BASE, ("b", "y"): BASE + 1e-12})  # round-off, not a difference
    r = S.compare_pair(f, ("a", "x"), ("b", "y"), "zero")
    assert (r["wins"], r["ties"], r["losses"]) == (0, 30, 0)
    assert r["p"] == 1.0 and "tied" in r["reason"]


def test_too_few_pairs_gives_no_p_and_says_why():
    f = rows({("a", "x"): [0.9, 0.8, 0.7], ("b", "y"): [0.5, 0.5, 0.5]})
    r = S.compare_pair(f, ("a", "x"), ("b", "y"), "zero")
    assert np.isnan(r["p"]) and "too few" in r["reason"] and r["wins"] == 3


def test_bootstrap_interval_holds_the_true_mean():
    symmetric = 0.7 + np.linspace(-0.2, 0.2, 41)  # mean exactly 0.7
    d = S.distribution(rows({("a", "x"): symmetric}))
    [row] = d.to_dict("records")
    assert row["n"] == 41 and row["mean"] == pytest.approx(0.7)
    assert row["ci_lo"] < 0.7 < row["ci_hi"] and row["ci_hi"] - row["ci_lo"] < 0.1
    assert S.bootstrap_mean_ci(symmetric) == (row["ci_lo"], row["ci_hi"])  # seeded: the same interval again


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    hits = [lo < 0.7 < hi for lo, hi in (S.bootstrap_mean_ci(rng.normal(0.7, 0.05, 40), n_boot=500, seed=i)
                                         for i in range(300))]
    assert 0.88 <= np.mean(hits) <= 0.99


def test_share_perfect_and_n_na():
    d = S.distribution(rows({("a", "x"): [1.0, 1.0, 0.5, np.nan]}))
    assert d.loc[0, "n"] == 3 and d.loc[0, "n_na"] == 1 and d.loc[0, "share_perfect"] == pytest.approx(2 / 3)


def _truths_frame() -> pd.DataFrame:
    """t1 has every structural variant and acdc, t2 structural + -ablation, t3 acdc only; the AUC
    encodes (reference, ground truth) so a mixed-up row is seen."""
    code = {"structural": 0.1, "structural-ablation": 0.2, "structural-zero": 0.3, "acdc": 0.4}
    have = {"t1": list(code), "t2": ["structural", "structural-ablation"], "t3": ["acdc"]}
    out = []
    for ref, add in (("zero", 0.0), ("resample", 0.5)):
        for task, gts in have.items():
            for gt in gts:
                out.append({"task": task, "method": "m", "variant": "v", "ground_truth": gt, "level": "edge",
                            "auc": code[gt] + add, "ablation": ref, "control": "trained", "status": "ok",
                            "n_edges": 10, "n_positive": 3})
    return pd.DataFrame(out)


def test_matched_ground_truth_per_reference():
    c = S.circuit_frame(_truths_frame())
    got = {(r.reference, r.task): (r.ground_truth, r.auc) for r in c.itertuples()}
    assert got == {("zero", "t1"): ("structural-zero", 0.3), ("zero", "t2"): ("structural", 0.1),
                   ("zero", "t3"): ("acdc", 0.4), ("resample", "t1"): ("structural-ablation", 0.7),
                   ("resample", "t2"): ("structural-ablation", 0.7), ("resample", "t3"): ("acdc", 0.9)}
    assert S.matched_ground_truth("zero", ["structural-ablation", "structural"]) == "structural"
    assert S.matched_ground_truth("zero", ["other"]) is None


def test_fixed_ground_truth_leaves_out_tasks_without_it():
    c = S.circuit_frame(_truths_frame(), ground_truth="acdc")
    assert set(c["task"]) == {"t1", "t3"} and set(c["ground_truth"]) == {"acdc"}


def test_controls_failures_and_node_rows_are_left_out():
    f = rows({("a", "x"): [0.9] * 6})
    extra = pd.concat([f.assign(control="reset", auc=0.1), f.assign(status="error", auc=0.2),
                       f.assign(level="node", auc=0.3)])
    c = S.circuit_frame(pd.concat([f, extra]))
    assert len(c) == 6 and (c["auc"] == 0.9).all()


def test_references_are_never_pooled():
    z = rows({S.BASELINE: BASE, ("a", "x"): BASE + 0.05}, ref="zero")
    r = rows({("a", "x"): BASE - 0.3}, ref="resample")  # no baseline under resample: nothing to compare
    cmp = S.compare_methods(pd.concat([z, r]))
    assert set(cmp["reference"]) == {"zero"} and cmp.loc[0, "wins"] == 30
    d = S.distribution(pd.concat([z, r]))
    assert len(d) == 3 and d.set_index(["reference", "method"]).loc[("resample", "a"), "n"] == 30


def test_holm_is_monotone_and_keeps_nan():
    p = [0.001, 0.04, 0.03, 0.2, float("nan"), 0.01]
    adj = S.holm(p)
    finite = [(a, b) for a, b in zip(p, adj) if np.isfinite(a)]
    ordered = sorted(finite)
    assert all(b1 <= b2 for (_, b1), (_, b2) in zip(ordered, ordered[1:]))
    assert all(a <= b <= 1 for a, b in finite) and np.isnan(adj[4])
    assert adj[0] == pytest.approx(0.005)  # family of 5 finite p-values


def test_method_comparison_adjusts_within_a_reference():
    f = rows({S.BASELINE: BASE, ("a", "x"): BASE + 0.05, ("b", "y"): BASE, ("c", "z"): BASE - 0.1})
    cmp = S.compare_methods(f).set_index("method")
    assert cmp.loc["a", "significant"] and cmp.loc["c", "significant"] and not cmp.loc["b", "significant"]
    assert cmp.loc["a", "p_holm"] >= cmp.loc["a", "p"] and cmp.loc["b", "p_holm"] == 1.0


def test_answer_says_no_significant_difference_when_there_is_none():
    rng = np.random.default_rng(3)
    f = rows({S.BASELINE: BASE, ("a", "x"): BASE + rng.normal(0, 0.01, 30), ("b", "y"): BASE + rng.normal(0, 0.01, 30)})
    text = S.suite_answer(f)
    assert "no significant difference" in text and "names no best method" in text


def test_answer_names_a_winner_only_when_it_is_one():
    f = rows({S.BASELINE: BASE, ("a", "x"): BASE + 0.05, ("random", "uniform"): BASE * 0 + 0.5})
    text = S.suite_answer(f)
    assert "a x has the highest mean edge AUC" in text and "significantly above each of the 1 other" in text
    assert "1 method variants score significantly higher" in text


def test_answer_with_few_circuits_explains_why_nothing_can_be_significant():
    f = rows({S.BASELINE: BASE[:6], ("a", "x"): BASE[:6] + 0.05, ("b", "y"): BASE[:6] + 0.06})
    text = S.suite_answer(f)  # 6 of 6 wins: p = 0.031, but 0.062 after Holm over 2 comparisons
    assert "b y has the highest mean" in text and "no significant difference" in text
    assert "smallest possible Wilcoxon p is 0.031" in text and "significantly above" not in text
    alone = S.suite_answer(rows({S.BASELINE: BASE[:6], ("a", "x"): BASE[:6] + 0.05}))
    assert "significantly above each of the 1 other" in alone  # one comparison: 0.031 < 0.05


def _targets(seed_shift=0.0, ll_shift=0.1, n=30) -> pd.DataFrame:
    base = BASE[:n]
    aucs = {("grad-wrong", "logit-diff-mse/activation"): base + seed_shift,
            ("grad-wrong", "least-likely/activation"): np.clip(base + ll_shift, 0, 1),
            ("grad-wrong", "uniform/activation"): base + 0.001 * np.sin(np.arange(n)),
            ("grad-wrong", "logit-diff-mse/weight-node"): base}
    return rows(aucs)


def test_targets_compared_with_the_seed_within_a_site():
    tc = S.compare_targets_suite(_targets())
    assert set(tc["site"]) == {"activation"}  # weight-node has one target: nothing to compare
    t = tc.set_index("target")
    assert t.loc["least-likely", "wins"] == 30 and t.loc["least-likely", "significant"]
    assert np.isnan(t.loc["logit-diff-mse", "p"]) and t["friedman_p"].iloc[0] < 0.001
    text = S.suite_answer(_targets())
    assert "least-likely has the highest mean" in text and "significantly different from the seed's" in text


def test_tied_targets_are_called_a_tie():
    f = _targets(ll_shift=0.0)
    text = S.suite_answer(f)
    assert "no significant difference between the targets" in text


def test_size_correlation():
    up = np.linspace(0.6, 0.95, 10)
    f = rows({("a", "x"): up, ("b", "y"): np.full(10, 0.8)}, n_edges=list(range(10, 110, 10)))
    sc = S.size_correlation(S.circuit_frame(f, depth={f"suite:t{i:02d}": i % 3 for i in range(10)}))
    a = sc[(sc["method"] == "a") & (sc["covariate"] == "n_edges")].iloc[0]
    assert a["rho"] == pytest.approx(1.0) and a["p"] < 0.001
    b = sc[(sc["method"] == "b") & (sc["covariate"] == "n_edges")].iloc[0]
    assert np.isnan(b["rho"]) and "constant AUC" in b["note"]
    assert set(sc["covariate"]) == {"n_edges", "n_positive", "depth"}
    assert "constant n_positive" in sc[(sc["method"] == "a") & (sc["covariate"] == "n_positive")]["note"].iloc[0]


def test_figures_and_blocks_are_written(tmp_path):
    from harness.report.suite import suite_items

    rng = np.random.default_rng(0)
    f = pd.concat([rows({S.BASELINE: BASE[:8], ("eap", "noising"): BASE[:8] - 0.05,
                         ("random", "uniform"): 0.5 + rng.normal(0, 0.01, 8)}, ref=ref,
                        n_edges=[16, 38, 38, 68, 106, 106, 200, 300]) for ref in ("zero", "resample")]
                  + [_targets(n=8)])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    items = suite_items(f, tmp_path / "a", n_boot=200)
    assert items[0][0] == "h2" and "which method ranks circuits best" in items[0][1]
    images = {Path(x).name for kind, x in items if kind == "img"}
    for name in ("suite_distribution.png", "suite_wins.png", "suite_size.png"):
        assert (tmp_path / "a" / name).stat().st_size > 1000 and name in images
    assert any(kind == "table" and {"method", "variant"} <= set(x.columns) for kind, x in items)
    suite_items(f, tmp_path / "b", n_boot=200)
    for p in (tmp_path / "a").iterdir():  # the same input gives the same files
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name


def test_baseline_run_end_to_end(tmp_path):
    from harness.report.render import _suite_blocks

    res = pd.read_csv(BASELINE_CSV)
    c = S.circuit_frame(res)
    d = S.distribution(c)
    ok = res[(res["status"] == "ok") & (res["control"] == "trained") & (res["level"] == "edge")]
    assert set(zip(d["reference"], d["method"], d["variant"])) == set(zip(ok["ablation"], ok["method"], ok["variant"]))
    assert not d.duplicated(["reference", "method", "variant"]).any()
    assert (c.groupby(["reference", "task"])["ground_truth"].nunique() == 1).all()
    items = _suite_blocks(res[(res["status"] == "ok") & (res["control"] == "trained")], tmp_path)  # the report's section
    text = [x for kind, x in items if kind == "p"]
    assert "resample reference:" in text and "zero reference:" in text
    tables = [x for kind, x in items if kind == "table" and "circuits" in x.columns]
    # tracr-xproportion-acdc (a reproduction: another task's circuit on other inputs) is not counted twice
    counts = [sum(int(n) for n in re.findall(r"\d+", c)) for t in tables for c in t["circuits"]]  # "n (+k n/a)"
    assert tables and set(counts) == {6}
