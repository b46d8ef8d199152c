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

from conftest import tasks_restored
from harness.cli import main
from harness.core.engine import Engine
from harness.core.graph import Graph
from harness.eval.round_off import measured_floor
from harness.eval.scoring import score_ranking
from harness.eval.suite_stats import matched_ground_truth
from harness.methods.registry import get_method
from harness.programs.library import CANDIDATES, EXCLUDED, LIBRARY, SATURATED, ZERO_ABLATION_EXCEPTIONS
from harness.programs.structural_gt import edge_mask
from harness.programs.tracr_models import compile_program
from harness.programs.user_program import check_circuit
from harness.tasks import get_task
from harness.tasks.suite_tasks import build_library
from test_tracr import assert_reproduces_tracr

NAMES = list(LIBRARY)
ZERO_AUC: dict = {}  # name -> zero-ablation edge AUC of exact patching (filled by the patching test)


@pytest.fixture(scope="module")
def suite():
    """Every shipped program compiled and registered once (TASKS restored after the module)."""
    with tasks_restored():
        yield build_library()


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
    with tasks_restored():
        done, failed = build_library(list(EXCLUDED), CANDIDATES)
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
    tokens = task.ground_truth_inputs()
    for variant, gt in gts.items():
        mask = gt.edge_mask(graph)  # validation: every edge is an edge of this graph
        assert torch.equal(mask, edge_mask(m, variant, graph, tokens))
    check_circuit(gts["structural"].edge_mask(graph), graph, name)  # edges, a head, off-circuit edges
    d = task.data()
    eng = Engine(task.load_model(dtype=torch.float64))
    assert d.n >= 2 and d.clean.shape == d.corrupted.shape
    changed = (eng.logits(d.clean) - eng.logits(d.corrupted))[:, 1:].abs().flatten(1).amax(-1)
    assert (changed > 1e-6).all()  # the corruption changes the output on every kept row


def exact_patching(task, ablation: str) -> tuple:
    """(edge AUC, float64 scores, tie floor, ground-truth mask) of exact edge patching under
    `ablation`, scored as a run scores it (harness.eval.round_off: the measured tie floor)
    against the ground truth matched to the reference (harness.eval.suite_stats)."""
    eng = Engine(task.load_model(dtype=torch.float64))
    gts = task.ground_truths()
    mask = gts[matched_ground_truth(ablation, gts)].edge_mask(eng.graph)
    spec, data = get_method("act-patch-edge"), task.data().with_ablation(ablation)
    scores = spec.run(eng, data, "batched")
    floor = measured_floor(spec, eng, data, "batched", 0, scores)
    scores = floor.ranked(scores)
    return score_ranking(scores, mask, floor.floor).auc, scores, floor.floor, mask


@pytest.mark.parametrize("name", NAMES)
def test_exact_patching_under_zero_ablation(suite, name):
    """Against the ground truth matched to zero ablation the ranking is exact, except the listed
    programs, whose stated reason is checked."""
    auc, s, floor, matched = exact_patching(get_task(LIBRARY[name].task_name), "zero")
    ZERO_AUC[name] = auc
    scored = s.abs() > floor
    assert not (scored & ~matched).any()  # every edge that changes the output is in the circuit
    why = ZERO_ABLATION_EXCEPTIONS.get(name)
    if why is None:
        assert auc == 1.0
        return
    assert auc < 1.0, f"{name} now scores AUC 1.0: remove it from ZERO_ABLATION_EXCEPTIONS"
    assert why == SATURATED
    assert (~scored & matched).any()  # ground-truth edges no single zeroing changes the output through


def test_zero_ablation_auc_1_on_90_percent_of_the_library(suite):
    aucs = {n: ZERO_AUC.get(n) for n in NAMES}
    if any(a is None for a in aucs.values()):
        pytest.skip("needs test_exact_patching_under_zero_ablation to have run for every program")
    share = sum(a == 1.0 for a in aucs.values()) / len(aucs)
    assert share >= 0.9, {n: round(a, 4) for n, a in aucs.items() if a < 1.0}
    assert {n for n, a in aucs.items() if a < 1.0} == set(ZERO_ABLATION_EXCEPTIONS)


def test_run_a_suite_task_from_the_cli(tmp_path):
    out = tmp_path / "o"
    with tasks_restored():
        assert main(["run", "--tasks", "suite:lib-frac_prevs-4x5", "--methods", "act-patch-edge", "--ablation", "zero",
                     "--controls", "trained", "--no-progress", "--bootstrap", "0", "--no-faithfulness",
                     "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    auc = df[(df.level == "edge") & (df.ground_truth == "structural")]
    assert set(df["task"]) == {"suite:lib-frac_prevs-4x5"} and (auc["auc"] == 1.0).all()
