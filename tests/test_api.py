"""The Python API (issue 15, item 7): the README's example runs as printed, and the API's
scores and AUCs are the main job's (`scores.parquet`, `results.csv`) for the same unit."""
import re
from pathlib import Path

import pandas as pd
import pytest

from harness import api

README = Path(__file__).parents[1] / "README.md"


def _readme_api_example() -> str:
    return next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "from harness import api" in b)


def test_the_readme_s_api_example_runs_and_is_short(capsys):
    block = _readme_api_example()
    ns = {}
    exec(block, ns)
    lines = [ln for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) <= 8, "the README promises a short example"
    printed = capsys.readouterr().out
    assert "auc" in printed and "pessimistic_auc" in printed


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    from harness.cli import main

    out = tmp_path_factory.mktemp("api") / "out"
    rc = main(["-q", "run", "--tasks", "tracr-reverse", "--methods", "grad-wrong", "eap", "--variants",
               "uniform/activation", "logit-diff-mse/weight-edge", "noising", "--controls", "trained",
               "--bootstrap", "0", "--no-faithfulness", "--no-progress", "--out", str(out)])
    assert rc == 0
    return out


@pytest.mark.parametrize("method,variant,reference", [("grad-wrong", "uniform/activation", "resample"),
                                                      ("grad-wrong", "logit-diff-mse/weight-edge", "zero"),
                                                      ("eap", "noising", "zero")])
def test_the_api_gives_the_run_s_scores_and_aucs(cli_run, method, variant, reference):
    loaded = api.load("tracr-reverse", reference=reference)
    mine = api.run_method(loaded, method, variant)
    stored = pd.read_parquet(cli_run / "scores.parquet")
    theirs = stored[(stored["method"] == method) & (stored["variant"] == variant) & (stored["ablation"] == reference)]
    theirs = theirs.reset_index(drop=True).astype({c: object for c in theirs.columns if theirs[c].dtype == "category"})
    assert len(mine) == loaded.graph.n_edges == len(theirs)
    pd.testing.assert_frame_equal(mine, theirs, check_exact=True)  # names, order, float64 scores, tie floor
    assert mine["sender"].tolist() == [s for s, _ in loaded.graph.edge_endpoints]
    aucs = api.score(loaded, mine)
    results = pd.read_csv(cli_run / "results.csv")
    rows = results[(results["method"] == method) & (results["variant"] == variant) & (results["ablation"] == reference)]
    merged = aucs.merge(rows, on=["ground_truth", "level"], suffixes=("", "_run"))
    assert len(merged) == len(aucs) == len(rows) > 0
    for col in ("auc", "pessimistic_auc"):
        pd.testing.assert_series_equal(merged[col], merged[f"{col}_run"], check_names=False)


def test_scores_csv_holds_what_scores_parquet_holds(cli_run):
    parquet = pd.read_parquet(cli_run / "scores.parquet")
    csv = pd.read_csv(cli_run / "scores.csv")
    parquet = parquet.astype({c: object for c in parquet.columns if parquet[c].dtype == "category"})
    assert len(parquet) == 3 * 2 * 106 - 106  # 3 rankings; grad-wrong's weight site: zero reference only
    pd.testing.assert_frame_equal(parquet, csv, check_exact=False, rtol=1e-15)
    assert set(csv["edge_type"]) == {"ADDITION", "DIRECT"} and csv["sender"].notna().all()


def test_score_refuses_a_frame_that_is_not_one_ranking():
    loaded = api.load("tracr-xproportion")
    scores = api.run_method(loaded, "eap")
    with pytest.raises(ValueError, match="each of the graph's"):
        api.score(loaded, scores.iloc[1:])
    with pytest.raises(ValueError, match="more than one ranking"):
        api.score(loaded, pd.concat([scores, scores.assign(tie_floor=1.0)]).drop_duplicates("edge", keep="last")
                  .assign(tie_floor=[0.0] * 19 + [1.0] * (len(scores) - 19)))
    with pytest.raises(ValueError, match="circuits at thresholds"):
        api.run_method(loaded, "acdc")
