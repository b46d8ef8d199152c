"""Compiled-versus-trained statistics (harness.eval.trained_compare) and their report section."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.eval import trained_compare as T
from harness.report.trained import trained_items

PROGRAMS = ["tracr-reverse", "tracr-xproportion", "tracr-ioi", "suite:lib-hist-3x4", "suite:gen-2-3x5",
            "suite:lib-count-3x4", "suite:gen-18-5x5", "tracr-docstring"]


def _row(task, method, auc, gt, ablation="resample", **kw):
    return {"task": task, "method": method, "variant": "v", "ground_truth": gt, "level": "edge", "auc": auc,
            "status": "ok", "control": "trained", "ablation": ablation, "n_edges": 100, **kw}


def _results(drop=0.2):
    rng = np.random.default_rng(0)
    rows = []
    for p in PROGRAMS:
        trained = "trained-" + p.removeprefix("suite:")
        base = rng.uniform(0.8, 0.95)
        rows += [_row(p, "worse", base, "structural"), _row(trained, "worse", base - drop - rng.uniform(0, 0.05), "correspondence"),
                 _row(p, "same", 0.9, "structural"), _row(trained, "same", 0.9 + rng.normal(0, 0.01), "correspondence"),
                 # other ground truths and controls never enter the comparison
                 _row(p, "worse", 0.1, "structural-ablation"), _row(trained, "worse", 0.99, "structural"),
                 _row(trained, "worse", 0.0, "correspondence", control="reset")]
    rows.append(_row("tracr-induction", "worse", 0.5, "structural"))  # no trained side: not a pair
    return pd.DataFrame(rows)


def test_pairs_match_each_program_with_its_trained_model_on_their_own_ground_truths():
    p = T.pairs(_results())
    assert len(p) == 2 * len(PROGRAMS) and set(p["program"]) == set(PROGRAMS)
    assert T.base_of("trained-lib-hist-3x4", ["suite:lib-hist-3x4"]) == "suite:lib-hist-3x4"
    w = p[p["method"] == "worse"]
    assert (w["change"] < -0.19).all() and (w["compiled"] > 0.79).all()


def test_a_consistent_drop_degrades_and_noise_does_not():
    s = T.summary(T.pairs(_results())).set_index("method")
    assert s.loc["worse", "verdict"] == "degrades" and s.loc["worse", "change_hi"] < 0
    assert s.loc["same", "verdict"] == "no clear change"
    assert s.loc["worse", "n"] == len(PROGRAMS)
    line = T.answer(T.summary(T.pairs(_results())))[0]
    assert line.startswith("resample reference, edge level, 8 programs: of 2 method variants, 1 rank") and "worse v" in line


def test_too_few_programs_never_degrade():
    few = _results()
    few = few[few["task"].str.contains("reverse|xproportion|ioi")]
    s = T.summary(T.pairs(few))
    assert (s["verdict"] == "no clear change").all() and s["p"].isna().all()


def test_report_section_writes_table_figure_and_csv(tmp_path):
    blocks = trained_items(_results(), tmp_path)
    kinds = [k for k, _ in blocks]
    assert kinds[0] == "h2" and "img" in kinds and "table" in kinds
    assert (tmp_path / "compiled_vs_trained.png").stat().st_size > 1000
    csv = pd.read_csv(tmp_path / "compiled_vs_trained.csv")
    assert len(csv) == 2 * len(PROGRAMS)
    assert trained_items(_results().query("~task.str.startswith('trained-')"), tmp_path) == []
