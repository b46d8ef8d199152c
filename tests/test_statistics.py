"""The headline's paired test: targets compared within one site and one reference, across tasks."""
import numpy as np
import pandas as pd
import pytest

from harness.eval.statistics import _holm, compare_targets


def frame(aucs: dict, site="activation", ref="zero"):
    """aucs: target -> list of edge AUCs, one per (task, ground truth) pair."""
    rows = []
    for t, vals in aucs.items():
        for i, a in enumerate(vals):
            rows.append({"method": "grad-wrong", "variant": f"{t}/{site}", "level": "edge", "ablation": ref,
                         "task": f"task{i}", "ground_truth": "gt", "auc": a})
    return pd.DataFrame(rows)


def test_identical_targets_cannot_be_told_apart():
    same = [0.8, 0.6, 0.9, 0.7]
    [c] = compare_targets(frame({"logit-diff-mse": same, "uniform": same, "inverted": same}))
    assert c.n_pairs == 4 and c.n_tied_pairs == 4 and not c.distinguishable
    assert "cannot be told apart" in c.sentence()


def test_a_consistently_better_target_is_found():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.8, size=12)
    [c] = compare_targets(frame({"logit-diff-mse": base, "uniform": base + 0.001 * rng.standard_normal(12),
                                 "least-likely": base + 0.15}))
    assert c.distinguishable and c.friedman_p < 0.01
    assert c.versus_seed["least-likely"] < 0.05 and "differ" in c.sentence()


def test_sites_and_references_are_never_pooled():
    a = frame({"logit-diff-mse": [0.5, 0.6], "uniform": [0.5, 0.6]}, site="activation", ref="zero")
    b = frame({"logit-diff-mse": [0.9, 0.9], "uniform": [0.1, 0.1]}, site="activation", ref="resample")
    c = frame({"logit-diff-mse": [0.9, 0.8]}, site="weight-node", ref="zero")  # one target: nothing to compare
    got = {(x.site, x.reference): x for x in compare_targets(pd.concat([a, b, c]))}
    assert set(got) == {("activation", "zero"), ("activation", "resample")}
    assert got[("activation", "zero")].means == {"logit-diff-mse": pytest.approx(0.55), "uniform": pytest.approx(0.55)}


def test_holm():
    assert _holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
