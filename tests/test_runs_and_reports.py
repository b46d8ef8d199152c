"""Runs are resumable and deterministic, reports render, bootstrap intervals behave, and the
regression check fails when (and only when) something got worse."""
import json
from html.parser import HTMLParser

import numpy as np

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.report.compare import compare
from harness.core.engine import Engine
from harness.methods import get_method
from harness.run.runner import RunConfig, bootstrap_intervals, run
from harness.core.data import Metric, TaskData
from harness.core.weights import ModelConfig, random_weights
from harness.tasks import get_task

FAST = dict(tasks=["tracr-xproportion"], methods=["eap", "random", "grad-wrong"],
            variants=["noising", "uniform", "logit-diff-mse/activation", "uniform/activation"], progress=False)


def key_cols(df):
    return df.drop(columns=["seconds"]).sort_values(["task", "method", "variant", "ablation", "control", "ground_truth",
                                                     "level"]).reset_index(drop=True)


def test_same_seed_same_scores(tmp_path):
    a = run(RunConfig(out=str(tmp_path / "a"), bootstrap=1000, **FAST))
    b = run(RunConfig(out=str(tmp_path / "b"), bootstrap=1000, **FAST))
    pd.testing.assert_frame_equal(key_cols(a.frame()), key_cols(b.frame()))
    ra = {(r["method"], r["variant"], r["ablation"], r.get("control")): r.get("scores", r["rows"]) for r in a.records()}
    rb = {(r["method"], r["variant"], r["ablation"], r.get("control")): r.get("scores", r["rows"]) for r in b.records()}
    assert ra == rb and any(k[3] == "reset" for k in ra)  # reset controls too


def test_interrupted_run_resumes_to_the_same_results(tmp_path, monkeypatch):
    full = run(RunConfig(out=str(tmp_path / "full"), bootstrap=1000, **FAST))
    spec = get_method("grad-wrong")
    real = spec.fn
    calls = {"n": 0}

    def dies_on_second_call(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return real(*a, **k)

    monkeypatch.setattr(spec, "fn", dies_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        run(RunConfig(out=str(tmp_path / "part"), bootstrap=1000, **FAST))
    monkeypatch.setattr(spec, "fn", real)
    kept = len(list((tmp_path / "part" / "records").glob("*.json")))
    assert 0 < kept < len(full.records())  # finished work was written, the rest was not
    resumed = run(RunConfig(out=str(tmp_path / "part"), bootstrap=1000, **FAST))
    pd.testing.assert_frame_equal(key_cols(resumed.frame()), key_cols(full.frame()))


def test_resume_skips_finished_and_fresh_redoes(tmp_path, monkeypatch):
    run(RunConfig(out=str(tmp_path), bootstrap=0, **FAST))
    spec = get_method("eap")
    monkeypatch.setattr(spec, "fn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    run(RunConfig(out=str(tmp_path), bootstrap=0, **FAST))  # nothing recomputed
    st = run(RunConfig(out=str(tmp_path), bootstrap=0, fresh=True, **FAST))
    rec = st.get("tracr-xproportion", "eap", "noising", "resample")
    assert rec["status"] == "error" and "recomputed" in rec["error"]
    assert st.get("tracr-xproportion", "random", "uniform", "zero")["status"] == "ok"  # the others completed


def test_report_html_is_self_contained(tmp_path):
    assert main(["run", "--tasks", "tracr-xproportion", "tracr-reverse", "--methods", "eap", "grad-wrong",
                 "--variants", "noising", "logit-diff-mse/activation", "uniform/activation",
                 "--out", str(tmp_path), "--bootstrap", "1000", "--no-progress"]) == 0
    text = (tmp_path / "report.html").read_text()

    class P(HTMLParser):
        imgs, tables = [], 0

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.imgs.append(dict(attrs)["src"])
            if tag == "table":
                self.tables += 1

    p = P()
    p.feed(text)
    assert p.imgs and all(s.startswith("data:image/png;base64,") and len(s) > 1000 for s in p.imgs)
    assert p.tables >= 2
    md = (tmp_path / "report.md").read_text()
    assert "Which maximally wrong answer" in md and "roc_tracr-reverse.png" in md
    assert "Published AUCs" in md and "0.679" in md  # ACDC Table 2 tracr-proportion ACDC(E)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"] and "tracr-xproportion" in meta["tasks"]
    csv = pd.read_csv(tmp_path / "results.csv")
    for c in ["task", "method", "variant", "level", "auc", "pessimistic_auc", "n_edges", "n_positive", "seconds", "device", "auc_lo", "auc_hi"]:
        assert c in csv.columns
    has = csv["auc_lo"].notna()
    assert has.any() and (csv.loc[has, "auc_lo"] <= csv.loc[has, "auc_hi"]).all()
    assert csv.loc[csv["auc"].isna(), "auc_lo"].isna().all()  # an n/a AUC has no interval
    # An estimate can still sit outside its interval (resampling breaks the clean/corrupted pairing
    # the estimate was made on); the report marks such rows instead of hiding them.
    outside = csv[(csv["auc"] < csv["auc_lo"] - 1e-12) | (csv["auc"] > csv["auc_hi"] + 1e-12)]
    if len(outside):
        assert "\u2020" in md


def _synthetic(n, seed=0):
    """A random model and a random next-token task: scores vary with the examples drawn."""
    cfg = ModelConfig("tiny", 2, 2, 16, 4, 20, 6, d_mlp=16)
    eng = Engine(random_weights(cfg, seed=1, init_range=0.3))
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 20, (n, 6), generator=g)
    corr = torch.randint(0, 20, (n, 6), generator=g)
    pos = torch.zeros(n, 6, dtype=torch.bool)
    pos[:, -1] = True
    correct = torch.randint(0, 20, (n, 6), generator=g)
    wrong = ((correct + 1 + torch.randint(0, 18, (n, 6), generator=g)) % 20).unsqueeze(-1)
    data = TaskData(clean, corr, pos, metric=Metric("l2-all", lambda lg, cl: (lg - cl).pow(2).mean((-1, -2))), correct=correct,
                    wrong=wrong)
    return eng, data


class _GT:
    """Half of the edges into the output, as a stand-in circuit."""

    def __init__(self, graph):
        m = torch.zeros(graph.n_edges, dtype=torch.bool)
        m[torch.arange(0, graph.n_edges, 3)] = True
        self.m = m

    def edge_mask(self, graph):
        return self.m


class _Task:
    def __init__(self, graph):
        self.gt = _GT(graph)

    def ground_truths(self):
        return {"planted": self.gt}


def test_bootstrap_contains_estimate_and_shrinks():
    """Per-example effects with fixed means plus noise: the interval holds the estimate and narrows
    as examples grow. (A random model on random tokens would not do: there every edge's mean effect
    is 0, so the ranking is noise at every n and no interval should shrink.)"""
    from harness.eval.scoring import score_edges_and_nodes
    from harness.methods.registry import MethodSpec

    eng, _ = _synthetic(8)
    task = _Task(eng.graph)
    E = eng.graph.n_edges
    mean = torch.linspace(0.0, 1.0, E, dtype=torch.float64)[torch.randperm(E, generator=torch.Generator().manual_seed(1))]

    def planted(engine, data, per_example=False):
        noise = torch.randn(data.n, E, generator=torch.Generator().manual_seed(data.n), dtype=torch.float64)
        terms = (mean + noise) / data.n
        return terms if per_example else terms.sum(0)

    spec = MethodSpec("planted", planted, "", {"v": ({}, "")}, per_example=True)
    widths = []
    for n in (8, 2048):
        _, data = _synthetic(n)
        point = score_edges_and_nodes(eng.graph, spec.run(eng, data, "v"), task.gt.m)["edge"].auc
        iv = bootstrap_intervals(spec, eng, data, "v", task, n_boot=1000, seed=0)[("planted", "edge")]
        assert iv["auc_lo"] <= point <= iv["auc_hi"]
        widths.append(iv["auc_hi"] - iv["auc_lo"])
    assert widths[1] < widths[0] / 2


def test_compare_passes_on_itself_and_fails_on_a_doctored_baseline(tmp_path, capsys):
    run(RunConfig(out=str(tmp_path / "r"), bootstrap=0, **FAST))
    assert main(["compare", str(tmp_path / "r"), "--baseline", str(tmp_path / "r" / "results.csv")]) == 0
    df = pd.read_csv(tmp_path / "r" / "results.csv")
    better = df.copy()
    i = better.index[(better["method"] == "grad-wrong") & (better["level"] == "edge")][0]
    better.loc[i, "auc"] = better.loc[i, "auc"] + 0.1  # the baseline was better: now it regressed
    better.to_csv(tmp_path / "base.csv", index=False)
    assert main(["compare", str(tmp_path / "r"), "--baseline", str(tmp_path / "base.csv")]) == 1
    assert "REGRESSED" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "r"), "--baseline", str(tmp_path / "base.csv"), "--tolerance", "0.2"]) == 0
    extra = pd.concat([df, df[df["auc"].notna()].iloc[[0]].assign(variant="a-row-that-vanished")])
    extra.to_csv(tmp_path / "base2.csv", index=False)
    c = compare(tmp_path / "r", tmp_path / "base2.csv", strict=True)
    assert not c.ok and c.missing and c.missing[0]["variant"] == "a-row-that-vanished"
    assert compare(tmp_path / "r", tmp_path / "base2.csv").ok  # by default: the rows both have


def _auc_rows(tasks=("t1", "t2"), methods=("eap", "grad-wrong")) -> pd.DataFrame:
    return pd.DataFrame([{"task": t, "method": m, "variant": "v", "ablation": "resample", "control": "trained",
                          "ground_truth": "gt", "level": lv, "auc": 0.8, "status": "ok", "error": None}
                         for t in tasks for m in methods for lv in ("edge", "node")])


def test_compare_checks_a_subset_run_on_the_rows_both_have(tmp_path):
    from harness.report.compare import compare_frames
    from harness.report.tables import TableError

    base = _auc_rows()
    one = base[base["task"] == "t1"]
    c = compare_frames(one, base)
    assert c.ok and c.compared == 4 and len(c.missing) == 4
    assert "  t2: eap 2, grad-wrong 2" in c.lines()  # what was not compared, per task and method
    assert not compare_frames(one, base, strict=True).ok
    worse = one.assign(auc=[0.8, 0.8, 0.7, 0.8])  # one shared row fell by 0.1
    c = compare_frames(worse, base)
    assert not c.ok and [r["method"] for r in c.regressions] == ["grad-wrong"]
    # a unit the run attempted and recorded as failed is a failure, not a missing row
    failed = pd.concat([one[one["method"] == "eap"], one[one["method"] == "grad-wrong"].iloc[[0]].assign(
        status="error", error="RuntimeError: boom", auc=float("nan"), level=None)])
    c = compare_frames(failed, base)
    assert not c.ok and len(c.failed) == 1 and c.failed[0]["error"] == "RuntimeError: boom"
    assert compare_frames(failed.assign(status=failed["status"].replace("error", "skipped")), base).ok
    # nothing in common: an error, not a vacuous pass
    other = _auc_rows(tasks=("t3",))
    for name, df in (("run", other), ("base", base)):
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    with pytest.raises(TableError, match="share no"):
        compare(tmp_path / "run.csv", tmp_path / "base.csv")


def test_a_reset_control_regresses_only_below_its_spread_over_reset_networks():
    """A reset-control row is a mean over reset networks; the baseline's spread over them
    (auc_lo, auc_hi) is its own noise: a fall within it is no regression, below it is, and
    tolerance 0 still asks for equal rows."""
    from harness.report.compare import compare_frames

    base = _auc_rows(tasks=("t1",)).assign(control="reset", auc_lo=0.6, auc_hi=0.95)
    within = base.assign(auc=base["auc"] - 0.15)  # 0.8 -> 0.65: beyond the tolerance, within the spread
    assert compare_frames(within, base).ok
    assert not compare_frames(within, base, tolerance=0).ok
    below = base.assign(auc=0.55)
    assert len(compare_frames(below, base).regressions) == len(base)
    trained = base.assign(control="trained")  # a trained row keeps the plain tolerance
    assert not compare_frames(within.assign(control="trained"), trained).ok


def test_unknown_names_exit_2_and_list_valid_ones(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--methods", "nope"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "eap" in err
    with pytest.raises(SystemExit) as e:
        main(["run", "--tasks", "nope"])
    assert e.value.code == 2 and "tracr-reverse" in capsys.readouterr().err


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = {t["name"]: t for t in out["tasks"]}
    assert names["tracr-xproportion"]["offline"] is True
    assert names["tracr-reverse"]["n_ground_truth_edges"]["acdc"] == 15
    methods = {m["name"]: m for m in out["methods"]}
    assert {"eap", "grad-wrong", "random"} <= set(methods)
    assert any(v["name"] == "logit-diff-mse/activation" for v in methods["grad-wrong"]["variants"])


def test_compare_flags_a_slower_timing_ratio(tmp_path):
    from harness.report.compare import compare_timing

    base = pd.DataFrame([{"model": "gpt2", "method": "eap", "variant": "noising", "device": "cpu", "batch": 8,
                          "seq_len": 16, "ratio_to_fwd_bwd": 1.1}])
    assert compare_timing(base, base).ok
    slower = base.assign(ratio_to_fwd_bwd=2.0)
    c = compare_timing(slower, base, factor=1.5)
    assert not c.ok and c.regressions[0]["now"] == 2.0
    assert compare_timing(slower, base, factor=2.0).ok


def test_vectorised_bootstrap_aucs_equal_score_ranking():
    from harness.eval.bootstrap import ranking_aucs
    from harness.eval.scoring import score_ranking

    g = np.random.default_rng(0)
    pos = np.array([True] * 4 + [False] * 9)
    rows = np.round(g.normal(size=(50, 13)), 1)  # rounding makes ties
    rows[3] = 0.0  # a row that ranks nothing
    auc, pess = ranking_aucs(rows, pos, floor=0.05)
    for r in range(50):
        if r == 3:
            assert np.isnan(auc[r]) and np.isnan(pess[r])
            continue
        want = score_ranking(rows[r], pos, 0.05)
        assert auc[r] == pytest.approx(want.auc, abs=1e-12) and pess[r] == pytest.approx(want.pessimistic_auc, abs=1e-12)



@pytest.mark.parametrize("n", [2000, 3000])  # merged sorts in three passes of 2,097 rows; row by row
def test_bootstrap_aucs_of_many_rows_equal_the_pair_counts(n):
    from harness.eval.bootstrap import VECTORISED_MAX_ITEMS, ranking_aucs
    from harness.eval.scoring import pair_counts

    assert (n > VECTORISED_MAX_ITEMS) == (n == 3000)
    g = np.random.default_rng(1)
    pos = g.random(n) < 0.1
    rows = np.round(g.normal(size=(4500, n)), 2)  # many exact ties and ties within the floor
    rows[2100] = 1.0  # ranks nothing, in the second pass
    auc, pess = ranking_aucs(rows, pos, floor=0.004)
    assert np.isnan(auc[2100]) and np.isnan(pess[2100])
    assert np.isfinite(np.delete(auc, 2100)).all()
    P, N = pos.sum(), (~pos).sum()
    for r in [0, 2096, 2097, 2101, 4194, 4499]:
        below, within = pair_counts(rows[r][pos], rows[r][~pos], 0.004)
        assert pess[r] == below.sum() / (P * N) and auc[r] == (below.sum() + within.sum() / 2) / (P * N)


def test_no_interval_from_too_few_resamples_or_reruns():
    eng, data = _synthetic(16)
    task = _Task(eng.graph)
    assert bootstrap_intervals(get_method("eap"), eng, data, "noising", task, n_boot=999, seed=0) == {}
    # ACDC re-runs per resample: 5 re-runs make no 95% interval
    assert bootstrap_intervals(get_method("acdc"), eng, data, "sweep", task, n_boot=1000, seed=0, max_reruns=5) == {}
    iv = bootstrap_intervals(get_method("eap"), eng, data, "noising", task, n_boot=1000, seed=0)
    assert iv[("planted", "edge")]["n_bootstrap"] == 1000


def test_random_baseline_is_the_mean_over_20_seeds(tmp_path):
    from harness.run.runner import CHANCE_SEEDS

    st = run(RunConfig(tasks=["tracr-reverse"], methods=["random"], out=str(tmp_path), bootstrap=1000, progress=False,
                       ablations=("zero",), faithfulness=False))
    rows = [r for r in st.records()[0]["rows"] if r["level"] == "edge"]
    spec = get_method("random")
    task = get_task("tracr-reverse")
    e = Engine(task.load_model(dtype=torch.float64))
    from harness.eval.bootstrap import score_all

    for row in rows:
        draws = [score_all(task, e.graph, spec.run(e, task.data(), "uniform", seed=s))[(row["ground_truth"], "edge")].auc
                 for s in range(CHANCE_SEEDS)]
        assert row["auc"] == pytest.approx(np.mean(draws)) and row["n_seeds"] == CHANCE_SEEDS
        assert row["auc_lo"] < row["auc"] < row["auc_hi"] and "mean of 20 seeds" in row["note"]
