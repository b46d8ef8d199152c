"""Structural ground truth of the tracr models (harness.structural_gt): files on disk are what
the rule gives now, they fit their graphs, and reverse/xproportion match the hand-derived
circuits of docs/tracr.md#structural-ground-truth and differ from ACDC's stored GT as explained there."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tasks_restored
from harness.core.engine import Engine
from harness.core.graph import QKV, Graph
from harness.core.ground_truth import ground_truth_dir, load_ground_truth, save_ground_truth
from harness.programs.rasp_programs import PROGRAMS
from harness.programs.structural_gt import bos_default_heads, derive_all, describe_edges, edge_mask, short_edge, write_all
from harness.tasks import get_task
from harness.programs.tracr_models import load_tracr


@pytest.mark.parametrize("task", list(PROGRAMS))
def test_files_on_disk_equal_derivation(task, tmp_path):
    """A stale file (program, rule or ACDC comparison changed) fails here: rerun
    `circuit-bench ground-truth`."""
    derived = derive_all(task, tokens=get_task(task).ground_truth_inputs())
    on_disk = {p.name for p in ground_truth_dir().glob(f"{task}.structural*.json")}
    assert on_disk == {f"{task}.{v}.json" for v in derived}
    for v, gt in derived.items():
        fresh = json.loads(save_ground_truth(gt, tmp_path).read_text())
        assert json.loads((ground_truth_dir() / f"{task}.{v}.json").read_text()) == fresh


def test_write_all_writes_every_program(tmp_path):
    paths = write_all(tmp_path, inputs=lambda t: get_task(t).ground_truth_inputs())
    assert {p.name for p in paths} == {p.name for p in ground_truth_dir().glob("tracr-*.structural*.json")}


@pytest.mark.parametrize("path", sorted(ground_truth_dir().glob("tracr-*.structural*.json")), ids=lambda p: p.name)
def test_files_fit_their_graph(path):
    gt = load_ground_truth(path)
    g = Graph(load_tracr(gt.task).weights.cfg)
    mask = gt.edge_mask(g)  # raises on unknown nodes / non-edges
    assert mask.sum() == gt.n_edges > 0
    assert gt.source and "Structural rule" in gt.description
    # Every head letter with an incoming edge has its DIRECT edge, and no other DIRECT edge.
    cfg = g.cfg
    for L in range(cfg.n_layers):
        for li, x in enumerate(QKV):
            for h in range(cfg.n_heads):
                r = int(g.qkv_receiver[L, li, h])
                fed = bool(mask[g.dense_index[r][g.dense_index[r] >= 0]].any())
                assert bool(mask[g.direct_index(L, x, h)]) == fed
    assert mask[g.dense_index[g.output_receiver][g.dense_index[g.output_receiver] >= 0]].any()


def test_reverse_and_xproportion_match_hand_derivation():
    rev = derive_all("tracr-reverse")
    assert describe_edges(rev["structural"].edges) == sorted(
        ["a0.0->m0", "m0->m1", "pos_embed->m1", "m1->m2", "m2->a3.0(q)", "pos_embed->a3.0(k)",
         "embed->a3.0(v)", "a3.0->out", "embed->a0.0(q)", "embed->a0.0(k)"])
    # Refinement (a): the length selector's predicate is TRUE, so its q and k edges go.
    assert set(describe_edges(rev["structural"].edges)) - set(describe_edges(rev["structural-ablation"].edges)) == {
        "embed->a0.0(q)", "embed->a0.0(k)"}
    xp = derive_all("tracr-xproportion")
    assert "structural-ablation" not in xp  # frac_prevs' LEQ selector is not constant
    # Zero ablation's circuit counts `one`/BOS where zeroing them changes the output: the length
    # head's value (BOS) and the MLPs' `one` bias, exactly the three edges ACDC's zero-ablation
    # circuit has beyond ours. The reverse gather's and frac_prevs' BOS-default q/k do not count:
    # every query matches a key on the tasks' inputs.
    tokens = get_task("tracr-reverse").ground_truth_inputs()
    rev = derive_all("tracr-reverse", tokens=tokens)
    added = set(describe_edges(rev["structural-zero"].edges)) - set(describe_edges(rev["structural"].edges))
    assert added == {"embed->a0.0(v)", "embed->m0", "embed->m1"}
    assert "structural-zero" not in derive_all("tracr-xproportion", tokens=get_task("tracr-xproportion").ground_truth_inputs())
    m = load_tracr("tracr-reverse")
    assert bos_default_heads(m, Graph(m.weights.cfg), tokens) == set()
    assert describe_edges(xp["structural"].edges) == sorted(
        ["embed->m0", "m0->a1.0(v)", "pos_embed->a1.0(q)", "pos_embed->a1.0(k)", "a1.0->out"])


def test_a_bos_default_counts_where_a_query_matches_no_key():
    """A generated program's numerical mean whose selector matches no key at some query (its
    default 0 comes from attending to BOS): that head's `one`/BOS q/k edges from the embedding
    join the zero-ablation circuit, and only on inputs where it happens."""
    from harness.tasks.suite_tasks import register_suite

    with tasks_restored():
        task = get_task(register_suite(["suite:gen-0-9x10"])[0])
        m = task.tracr()
        g = Graph(m.weights.cfg)
        tokens = task.ground_truth_inputs()
        used = bos_default_heads(m, g, tokens)
        assert used
        with_inputs, without = edge_mask(m, "structural-zero", g, tokens), edge_mask(m, "structural-zero", g)
        added = {short_edge(*g.edge_endpoints[i]) for i in (with_inputs & ~without).nonzero().flatten().tolist()}
        assert added and all(e.startswith("embed->a") and e.endswith(("(q)", "(k)")) for e in added)
        assert {int(e.split("->a")[1].split(".")[0]) for e in added} == {L for L, _ in used}


def _diff(task, variant="structural"):
    gts = get_task(task).ground_truths()
    ours, acdc = set(gts[variant].edges), set(gts["acdc"].edges)
    return {short_edge(*e) for e in ours - acdc}, {short_edge(*e) for e in acdc - ours}


def test_differences_from_acdc_are_the_expected_ones():
    """docs/tracr.md#structural-ground-truth: ACDC (zero ablation) adds edges carrying only `one`/`tokens:BOS` and, for reverse,
    omits the constant-QK q/k edges of the length head."""
    only_ours, only_acdc = _diff("tracr-reverse")
    assert only_ours == {"embed->a0.0(q)", "embed->a0.0(k)", "a0.0(q) DIRECT", "a0.0(k) DIRECT"}
    assert only_acdc == {"embed->m0", "embed->m1", "embed->a0.0(v)", "a0.0(v) DIRECT"}
    only_ours, only_acdc = _diff("tracr-reverse", "structural-ablation")
    assert only_ours == set()
    only_ours, only_acdc = _diff("tracr-xproportion")
    assert only_ours == set() and only_acdc == {"embed->a1.0(q)", "embed->a1.0(k)"}
    desc = get_task("tracr-reverse").ground_truths()["structural"].description
    assert "carries only one" in desc and "refinement (a)" in desc


@pytest.mark.parametrize("task", ["tracr-reverse", "tracr-xproportion"])
def test_non_ground_truth_edges_do_not_matter(task):
    """Patching every edge outside the structural GT from the corrupted run changes nothing."""
    t = get_task(task)
    d, eng = t.data("validation"), Engine(t.load_model())
    for gt in t.ground_truths().values():
        if gt.variant == "acdc":
            continue
        keep = gt.edge_mask(eng.graph)
        out = eng.logits(d.clean, (~keep).float(), eng.cache(d.corrupted))
        torch.testing.assert_close(out[:, 1:], eng.logits(d.clean)[:, 1:], atol=1e-5, rtol=0)
