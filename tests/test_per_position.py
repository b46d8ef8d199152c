"""Per-position edge scores (issue 16.6): each token position's term of a gradient method's edge
scores, checked against an independent reference (finite differences of an engine patch whose
source differs from the clean run at one position only), summing to the unchanged scores for every
variant that declares them, in chunks as in one pass, and stored by a run."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from harness.core.engine import SenderCache
from harness.core.references import source_cache
from harness.methods import all_methods, get_method
from harness.run.runner import RunConfig, run
from harness.run.store import ResultStore
from harness.tasks import get_task
from test_eap import finite_differences, tiny_task

PER_POSITION = [(m, v) for m, spec in all_methods().items() if spec.output == "ranking"
                for v in spec.variants if spec.supports_per_position(v)]


def at_position(clean: SenderCache, source: SenderCache, p: int) -> SenderCache:
    """The clean run's senders and q/k/v with the source's at position p only: patching an edge
    towards it changes its receiver's input (or q/k/v) at token p alone."""
    P = clean.senders.shape[2]
    here = torch.arange(P) == p
    senders = torch.where(here[None, None, :, None], source.senders.expand_as(clean.senders), clean.senders)
    qkv = torch.where(here[None, None, None, :, None, None], source.qkv.expand_as(clean.qkv), clean.qkv)
    return SenderCache(senders, qkv)


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_eap_per_position_equals_finite_differences_of_a_one_position_patch(ablation):
    e, data = tiny_task(ablation)
    terms = get_method("eap").run(e, data, "noising", per_position=True)  # [pos, n_edges]
    P = data.clean.shape[1]
    assert terms.shape == (P, e.graph.n_edges)
    with torch.no_grad():
        clean = e.cache(data.clean)
    source = source_cache(e, data)
    for p in range(P):
        fd = finite_differences(e, data, data.clean, at_position(clean, source, p), "logit-diff")
        torch.testing.assert_close(terms[p], fd, atol=1e-7, rtol=1e-5)
    assert terms[:-2].abs().sum() > 0  # the unscored positions carry effects too (through attention)


def test_edges_into_the_output_have_terms_only_at_the_scored_positions():
    e, data = tiny_task("resample")
    terms = get_method("eap").run(e, data, "noising", per_position=True)
    cols, _ = data.scored()
    into_output = e.graph.add_receiver[: e.graph.n_add] == e.graph.output_receiver
    unscored = torch.ones(data.clean.shape[1], dtype=torch.bool)
    unscored[cols] = False
    out_terms = terms[:, : e.graph.n_add][:, into_output]
    assert out_terms[unscored].abs().max() == 0
    assert out_terms[~unscored].abs().max() > 0


@pytest.mark.parametrize("method,variant", PER_POSITION)
def test_per_position_terms_sum_to_the_scores(method, variant):
    spec = get_method(method)
    e, data = tiny_task("zero" if "zero" in spec.references_for(variant) and "resample" not in
                        spec.references_for(variant) else "resample")
    torch.manual_seed(0)
    whole = spec.run(e, data, variant)
    torch.manual_seed(0)
    terms = spec.run(e, data, variant, per_position=True)
    assert terms.shape == (data.clean.shape[1], e.graph.n_edges)
    torch.testing.assert_close(terms.sum(0), whole, atol=1e-10, rtol=1e-9)
    if spec.supports_per_example(variant):  # both axes: [batch, pos, n_edges], summing to each
        torch.manual_seed(0)
        both = spec.run(e, data, variant, per_example=True, per_position=True)
        assert both.shape == (data.n, *terms.shape)
        torch.testing.assert_close(both.sum(0), terms, atol=1e-10, rtol=1e-9)
        torch.manual_seed(0)
        torch.testing.assert_close(both.sum(1), spec.run(e, data, variant, per_example=True), atol=1e-10, rtol=1e-9)
        torch.manual_seed(0)
        chunked = spec.run(e, data, variant, per_position=True, chunk=1)  # one example per pass
        torch.testing.assert_close(chunked, terms, atol=1e-10, rtol=1e-9)


def test_the_gradient_methods_declare_per_position_scores():
    declared = {m for m, _ in PER_POSITION}
    assert {"eap", "eap-ig", "grad-wrong", "eap-gp", "relp", "atp-star"} <= declared
    for m, spec in all_methods().items():
        assert m in declared or not spec.gradient or m in {"hisp", "sp"}, m  # docs say why not these


@pytest.mark.parametrize("method,variant", [("eap", "noising-abs"), ("atp-star", "qk-fix"), ("atp-star", "graddrop"),
                                            ("grad-wrong", "logit-diff-mse/weight-node"), ("hisp", "metric")])
def test_variants_without_a_split_over_positions_refuse(method, variant):
    spec = get_method(method)
    assert not spec.supports_per_position(variant)
    e, data = tiny_task("zero")
    with pytest.raises(ValueError, match="no per-position scores"):
        spec.run(e, data, variant, per_position=True)


def test_a_run_stores_position_scores_that_sum_to_its_scores(tmp_path):
    cfg = dict(tasks=["tracr-reverse"], methods=["eap", "act-patch-edge"], variants=["noising", "exact"],
               progress=False, bootstrap=0, faithfulness=False, controls=("trained",))
    run(RunConfig(out=str(tmp_path), **cfg))
    assert not (tmp_path / "position_scores.parquet").exists()
    run(RunConfig(out=str(tmp_path), per_position=True, **cfg))  # the eap records are redone, with terms
    pos = pd.read_parquet(tmp_path / "position_scores.parquet")
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert set(pos["method"]) == {"eap"} and set(pos["ablation"]) == {"resample", "zero"}
    summed = pos.groupby(["ablation", "edge"], observed=True)["score"].sum()
    eap = scores[scores["method"] == "eap"].set_index(["ablation", "edge"])["score"]
    # the stored scores are the float64 reruns' (tracr runs in float64 already): equal to round-off
    assert (summed - eap.loc[summed.index]).abs().max() < 1e-9 * eap.abs().max()
    P = get_task("tracr-reverse").data().clean.shape[1]
    assert pos["sender"].notna().all() and sorted(pos["position"].unique()) == list(range(P))
    from harness.report.positions import position_shares
    from harness.report.render import render

    labels, shares = position_shares(ResultStore(tmp_path).records())
    assert labels == ["eap noising (resample)", "eap noising (zero)"] and shares.shape == (2, P)
    np.testing.assert_allclose(shares.sum(1), 1.0)
    render(tmp_path)
    assert (tmp_path / "positions_tracr-reverse.png").exists()
    assert "positions_tracr-reverse.png" in (tmp_path / "report.md").read_text()


def test_the_python_api_gives_position_rows_that_sum_to_its_scores():
    from harness import api

    loaded = api.load("tracr-xproportion", reference="zero")
    rows = api.run_method(loaded, "eap", "noising", per_position=True)
    scores = api.run_method(loaded, "eap", "noising").set_index("edge")["score"]
    summed = rows.groupby("edge")["score"].sum()
    assert list(rows.columns[:6]) == ["task", "method", "variant", "ablation", "control", "position"]
    assert (summed - scores.loc[summed.index]).abs().max() < 1e-9 * scores.abs().max()
    with pytest.raises(ValueError, match="no per-position scores"):
        api.run_method(loaded, "eap", "noising-abs", per_position=True)
