"""The generated suite of tracr's own library programs (harness.programs.library): every shipped
program compiles, its converted model reproduces tracr's outputs on its task data, its structural
ground truth validates against its graph, its corruption changes the output on every row; and
exact edge patching under zero ablation ranks the ground truth with AUC 1.0, or the program is a
listed exception whose reason is checked here."""
import subprocess
import sys

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.core.engine import Engine
from harness.core.graph import QKV, Graph
from harness.eval.scoring import score_ranking
from harness.methods.registry import get_method
from harness.programs.library import (CANDIDATES, EXCLUDED, LIBRARY, ONE_BOS, SATURATED, ZERO_ABLATION_EXCEPTIONS,
                                      build_library)
from harness.programs.structural_gt import edge_mask, read_write_sets, short_edge
from harness.programs.tracr_models import compile_program
from harness.programs.user_program import check_circuit
from harness.tasks import TASKS, get_task
from test_tracr import assert_reproduces_tracr

NAMES = list(LIBRARY)
ZERO_AUC: dict = {}  # name -> zero-ablation edge AUC of exact patching (filled by the patching test)


@pytest.fixture(scope="module")
def suite():
    """Every shipped program compiled and registered once (TASKS restored after the module)."""
    saved = dict(TASKS)
    done, failed = build_library()
    yield done, failed
    TASKS.clear()
    TASKS.update(saved)


def test_the_library_is_not_registered_at_import():
    code = "import harness.tasks as t; print(sum(n.startswith('suite:') for n in t.TASKS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"


def test_every_tracr_lib_program_is_in_the_suite():
    fns = {"make_hist", "make_sort", "make_sort_unique", "make_sort_freq", "make_frac_prevs", "make_pair_balance",
           "make_shuffle_dyck", "make_shuffle_dyck2", "make_length", "make_count", "make_count_less_freq",
           "make_nary_sequencemap"}
    assert {p.fn for p in CANDIDATES.values()} == fns
    assert 15 <= len(LIBRARY) <= 24 and set(EXCLUDED) <= set(CANDIDATES)
    assert set(ZERO_ABLATION_EXCEPTIONS) <= set(LIBRARY)
    assert all(p.task_name == f"suite:{n}" and n.startswith("lib-") for n, p in LIBRARY.items())


def test_every_shipped_program_builds(suite):
    done, failed = suite
    assert not failed, "library programs that failed to build:\n" + "\n".join(f"{k}: {v}" for k, v in failed.items())
    assert set(done) == {p.task_name for p in LIBRARY.values()}


def test_excluded_programs_fail_for_the_documented_reason():
    saved = dict(TASKS)
    try:
        done, failed = build_library(list(EXCLUDED), CANDIDATES)
    finally:
        TASKS.clear()
        TASKS.update(saved)
    assert not done
    for name, why in EXCLUDED.items():
        assert why in failed[name], failed[name]


@pytest.mark.parametrize("name", NAMES)
def test_reproduces_tracr_and_its_ground_truth_validates(suite, name):
    p = LIBRARY[name]
    task = get_task(p.task_name)
    m = task.tracr()
    _, tm = compile_program(p.spec)  # tracr's own model, compiled afresh
    seqs = task.inputs("validation", 0)[0]
    if p.distinct_tokens:
        assert all(len(set(s)) == len(s) for s in seqs)
    assert_reproduces_tracr(m, tm, seqs[:20])
    graph = Graph(m.weights.cfg)
    gts, problems = task.read_ground_truths()
    assert not problems and "structural" in gts
    for variant, gt in gts.items():
        mask = gt.edge_mask(graph)  # validation: every edge is an edge of this graph
        assert torch.equal(mask, edge_mask(m, variant, graph))
    check_circuit(gts["structural"].edge_mask(graph), graph, name)  # edges, a head, off-circuit edges
    d = task.data()
    eng = Engine(task.load_model(dtype=torch.float64))
    assert d.n >= 2 and d.clean.shape == d.corrupted.shape
    changed = (eng.logits(d.clean) - eng.logits(d.corrupted))[:, 1:].abs().flatten(1).amax(-1)
    assert (changed > 1e-6).all()  # the corruption changes the output on every kept row


def _with_constant_dims(model, graph):
    """The structural rule with the `one` and `tokens:BOS` dims counted (what zero ablation sees)."""
    reads, writes = read_write_sets(model, graph, keep_constant_dims=True)
    mask = torch.zeros(graph.n_edges, dtype=torch.bool)
    mask[: graph.n_add] = ((reads.float() @ writes.float().T) > 0)[graph.add_receiver, graph.add_sender]
    fed = torch.zeros(len(graph.receivers), dtype=torch.bool)
    fed[graph.add_receiver[mask[: graph.n_add]]] = True
    cfg = model.weights.cfg
    for L in range(cfg.n_layers):
        for li, letter in enumerate(QKV):
            for h in range(cfg.n_heads):
                if fed[graph.qkv_receiver[L, li, h]]:
                    mask[graph.direct_index(L, letter, h)] = True
    return mask


@pytest.mark.parametrize("name", NAMES)
def test_exact_patching_under_zero_ablation(suite, name):
    task = get_task(LIBRARY[name].task_name)
    eng = Engine(task.load_model(dtype=torch.float64))
    g = eng.graph
    gt = task.ground_truths()["structural"].edge_mask(g)
    s = get_method("act-patch-edge").run(eng, task.data().with_ablation("zero"), "batched")
    auc = ZERO_AUC[name] = score_ranking(s, gt).auc
    why = ZERO_ABLATION_EXCEPTIONS.get(name)
    if why is None:
        assert auc == 1.0
        return
    assert auc < 1.0, f"{name} now scores AUC 1.0: remove it from ZERO_ABLATION_EXCEPTIONS"
    const = _with_constant_dims(task.tracr(), g)
    scored = s.abs() > 1e-9
    off = [short_edge(*g.edge_endpoints[i]) for i in (scored & ~gt).nonzero().flatten().tolist()]
    assert off  # some off-circuit edges change the output ...
    assert not (scored & ~const).any(), off  # ... and each carries only `one` / `tokens:BOS` (or is their DIRECT)
    if why == ONE_BOS:
        assert score_ranking(s, const).auc == 1.0  # counting those dims, the ranking is exact
    else:
        assert why == SATURATED
        assert (~scored & gt).any()  # ground-truth edges no single zeroing changes the output through


@pytest.mark.xfail(strict=True, reason="issue 17 asks for AUC 1.0 on >= 90% of the suite; under zero ablation "
                   "the structural rule leaves out the one/BOS edges of every SelectorWidth and categorical Aggregate "
                   "(ZERO_ABLATION_EXCEPTIONS), so only frac_prevs and pair_balance score 1.0")
def test_zero_ablation_auc_1_on_90_percent_of_the_suite(suite):
    aucs = {n: ZERO_AUC.get(n) for n in NAMES}
    if any(a is None for a in aucs.values()):
        pytest.skip("needs test_exact_patching_under_zero_ablation to have run for every program")
    share = sum(a == 1.0 for a in aucs.values()) / len(aucs)
    assert share >= 0.9, {n: round(a, 4) for n, a in aucs.items() if a < 1.0}


def test_run_a_suite_task_from_the_cli(tmp_path):
    saved = dict(TASKS)
    out = tmp_path / "o"
    try:
        assert main(["run", "--tasks", "suite:lib-frac_prevs-4x5", "--methods", "act-patch-edge", "--ablation", "zero",
                     "--controls", "trained", "--no-progress", "--bootstrap", "0", "--no-faithfulness",
                     "--out", str(out)]) == 0
    finally:
        TASKS.clear()
        TASKS.update(saved)
    df = pd.read_csv(out / "results.csv")
    auc = df[(df.level == "edge") & (df.ground_truth == "structural")]
    assert set(df["task"]) == {"suite:lib-frac_prevs-4x5"} and (auc["auc"] == 1.0).all()
