"""ROC/AUC against hand-computed values (ties included) and ACDC's own sanity values."""
import numpy as np
import pytest
import torch

from harness.core.architectures import ARCHITECTURES
from harness.core.graph import Graph
from harness.eval.scoring import (judge_family, judge_ranking, pair_counts, pareto_front, pessimistic_auc,
                                  score_edges_and_nodes, score_family, score_ranking)
from harness.core.numerics import FLOAT32_EPS, tie_floor


def test_acdc_pessimistic_auc_asserts():
    # acdc_graphics.pessimistic_auc's own asserts (docs/scoring.md#pessimistic-auc-and-pareto-filter, docs/scoring.md#peer-auc-definitions)
    assert pessimistic_auc(np.array([[0, 0], [1, 1]])) == 0
    assert pessimistic_auc(np.array([[0, 0], [0.5, 0.5], [1, 1]])) == pytest.approx(0.25)
    assert pessimistic_auc(np.array([[0, 0], [0.25, 0.25], [1, 1]])) == pytest.approx(0.1875)


def test_toy_ranking_with_ties_by_hand():
    # items: scores 3 (pos), 2 (neg), 2 (pos), 1 (neg), -5 (pos: |score| ranks first)
    r = score_ranking(torch.tensor([3.0, 2.0, 2.0, 1.0, -5.0]), torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool))
    # Mann-Whitney: pairs (pos, neg) = 3 x 2 = 6; wins: 5>2,5>1,3>2,3>1, 2 vs 2 tie (1/2), 2>1 -> 5.5
    assert r.auc == pytest.approx(5.5 / 6)
    # staircase: {5,3}: (0, 2/3); {2,2}: (1/2, 1); {1}: (1, 1) -> (1-0)(2/3) + (1-1/2)(1/3)
    assert r.pessimistic_auc == pytest.approx(2 / 3 + 1 / 6)
    assert r.n_positive == 3 and r.n_items == 5


def test_distinct_scores_give_equal_aucs():
    rng = np.random.default_rng(0)
    s = rng.normal(size=200)
    pos = rng.random(200) < 0.2
    r = score_ranking(s, pos)
    assert r.auc == pytest.approx(r.pessimistic_auc)


def test_perfect_and_all_tied_rankings():
    pos = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool)
    perfect = score_ranking(torch.tensor([9.0, 8.0, 1.0, 0.5, 0.1]), pos)
    assert perfect.auc == 1.0 and perfect.pessimistic_auc == 1.0
    tied = score_ranking(torch.zeros(5), pos)
    assert tied.auc == 0.5 and tied.pessimistic_auc == 0.0


def test_family_pareto_and_pessimistic():
    pos = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    circuits = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    r = score_family(circuits, pos)
    # points (0,.5), (.5,1), (1,0) -> (1,0) is dominated; front (0,0),(0,.5),(.5,1),(1,1)
    assert r.pessimistic_auc == pytest.approx(0.5 + 0.5 * 0.5)
    assert r.auc == pytest.approx(0.5 * (0.5 + 1) / 2 + 0.5 * 1)  # trapezoid over the front
    front = pareto_front(np.array([[0, 0], [0.1, 0.2], [0.2, 0.1], [1, 1]]))
    assert [0.2, 0.1] not in front.tolist()


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="NaN"):
        score_ranking(torch.tensor([1.0, float("nan")]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="some but not all"):
        score_ranking(torch.tensor([1.0, 2.0]), torch.tensor([False, False]))


def test_node_level_follows_edge_ranking():
    g = Graph(ARCHITECTURES["tracr-xproportion"])
    gt = torch.zeros(g.n_edges, dtype=torch.bool)
    gt[g.edge_ids["hook_embed[:] -> blocks.0.hook_mlp_in[:]"]] = True
    gt[g.edge_ids["blocks.0.hook_mlp_out[:] -> blocks.1.hook_v_input[:, :, 0]"]] = True
    scores = gt.double() * 10 + torch.linspace(0, 1, g.n_edges, dtype=torch.float64)
    res = score_edges_and_nodes(g, scores, gt)
    assert res["edge"].auc == 1.0
    # GT nodes: embed, mlp0 out, a1.0 v_input (mlp_in is not a ROC node): 3 of 19
    assert res["node"].n_positive == 3 and res["node"].n_items == 19
    # family input gives family scoring at both levels
    fam = score_edges_and_nodes(g, torch.stack([gt, torch.ones_like(gt)]), gt)
    assert fam["edge"].pessimistic_auc == 1.0


def test_round_off_does_not_rank():
    """Scores within the floor tie: noise near zero and near-equal scores rank nothing."""
    pos = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool)
    floor = 1e-5
    noisy = score_ranking(torch.tensor([5.0, 2e-9, 0.0, 0.0, 0.3, 0.3 + 1e-6]), pos, floor)
    clean = score_ranking(torch.tensor([5.0, 0.0, 0.0, 0.0, 0.3, 0.3]), pos, floor)
    assert noisy.auc == clean.auc and noisy.pessimistic_auc == clean.pessimistic_auc
    # without the floor the round-off decides (2e-9 lifts a negative, 1e-6 splits a tie)
    raw = score_ranking(torch.tensor([5.0, 2e-9, 0.0, 0.0, 0.3, 0.3 + 1e-6]), pos)
    assert (raw.auc, raw.pessimistic_auc) != (clean.auc, clean.pessimistic_auc)


def test_a_ranking_of_noise_alone_is_degenerate():
    """act-patch-edge/logit-diff on xproportion: 1.5e-8 on four edges, 0 elsewhere, objective ~0.2,
    under one float32 ulp of the objective (the floor's least value): no ranking."""
    pos = np.array([True, False] * 5)
    scores = np.zeros(10)
    scores[[1, 2, 5, 8]] = 1.5e-8
    r = judge_ranking(scores, pos, tie_floor(0.0, 0.2))
    assert np.isnan(r.auc) and "degenerate" in r.note
    assert not np.isnan(judge_ranking(scores, pos).auc)  # floor 0: exact ties only


def test_ties_are_pairwise_not_chained():
    """Neighbours 0.6 floor apart tie, but items 1.2 floors apart do not: a dense ranking is not
    collapsed into one tie by a chain of near neighbours (GPT-2's 32k edges were, under chaining)."""
    floor = 1.0
    scores = np.arange(10) * 0.6  # every neighbour within the floor
    below, within = pair_counts(scores[[9]], scores[:9], floor)
    assert below.tolist() == [8] and within.tolist() == [1]  # 4.8 is within 1.0 of 5.4; the rest are below
    pos = np.zeros(10, dtype=bool)
    pos[5:] = True
    r = score_ranking(scores, pos, floor)
    assert 0.9 < r.auc < 1.0 and r.pessimistic_auc < r.auc  # ranked, with a few half-counted ties
    # by hand: each positive's negatives below it by more than the floor, and within it
    P, N = 5, 5
    want_below = sum(sum(scores[i] - scores[j] > floor for j in range(5)) for i in range(5, 10))
    want_within = sum(sum(abs(scores[i] - scores[j]) <= floor for j in range(5)) for i in range(5, 10))
    assert r.pessimistic_auc == pytest.approx(want_below / (P * N))
    assert r.auc == pytest.approx((want_below + want_within / 2) / (P * N))


def test_the_floor_is_measured_round_off_with_a_margin_and_a_least_value():
    assert tie_floor(1e-6, 1.0) == pytest.approx(8e-6)
    assert tie_floor(0.0, 2.0) == pytest.approx(2 * FLOAT32_EPS)  # one float32 ulp of the objective
    assert tie_floor(0.0, 0.0) == 0.0


def test_the_pessimistic_curve_ranks_tied_negatives_first():
    """Its staircase area is the pessimistic AUC; with no floor it is ACDC's (ties enter together)."""
    pos = np.array([True, False, True, False, False])
    scores = np.array([1.0, 1.0 + 1e-9, 0.5, 0.2, 0.0])
    r = score_ranking(scores, pos, 1e-6)
    assert pessimistic_auc(np.stack([r.fpr, r.tpr], 1)) == pytest.approx(r.pessimistic_auc)
    assert r.pessimistic_auc == pytest.approx((2 + 2) / 6)  # 1.0 ties its negative; 0.5 beats two


def test_auc_is_na_with_too_few_negatives():
    """tracr-greaterthan's structural circuit holds 10 of its 11 nodes: one negative would decide."""
    pos = np.array([True] * 10 + [False])
    r = judge_ranking(np.arange(11.0), pos)
    assert np.isnan(r.auc) and np.isnan(r.pessimistic_auc) and "1 negative" in r.note
    ok = judge_ranking(np.arange(15.0), np.array([True] * 10 + [False] * 5))
    assert not np.isnan(ok.auc) and ok.note == ""
    fam = judge_family(np.ones((2, 11), dtype=bool), pos)
    assert np.isnan(fam.auc) and "needs at least 5" in fam.note


def test_a_ranking_that_ranks_nothing_is_na():
    """All scores equal (a zero gradient everywhere): no ranking, so no AUC, rather than 0.5."""
    pos = np.array([True, False] * 5)
    r = judge_ranking(np.zeros(10), pos)
    assert np.isnan(r.auc) and "degenerate" in r.note
    # the sign does not rank: |score| does
    assert "degenerate" in judge_ranking(np.array([2.0, -2.0] * 5), pos).note


def test_pareto_front_equals_its_definition_on_random_points():
    """The vectorised front keeps exactly the points no other point beats (strictly smaller FPR
    and strictly larger TPR), sorted by (FPR, TPR), ties and duplicates included."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        pts = rng.integers(0, rng.integers(1, 8), size=(rng.integers(1, 40), 2)) / 7.0
        u = np.unique(pts, axis=0)
        want = u[[not np.any((u[:, 0] < x) & (u[:, 1] > y)) for x, y in u]]
        assert np.array_equal(pareto_front(pts), want)
