"""The generated suite as a whole: its task names, `register_suite`, the presets, a suite run from
the CLI (the preset applied, the command line overriding it) and its report section."""
import pandas as pd
import pytest

from harness.cli import main
from harness.methods import all_methods
from harness.programs.grammar import GENERATED
from harness.programs.library import LIBRARY
from harness.programs.suite import suite_tasks
from harness.programs.user_program import ProgramError
from harness.tasks.suite_tasks import register_suite
from harness.run.presets import PRESETS, QUICK_LIBRARY, get_preset
from harness.tasks import TASKS


def test_the_suite_holds_at_least_60_programs_with_distinct_names():
    names = suite_tasks()
    assert len(names) == len(set(names)) == len(LIBRARY) + len(GENERATED) >= 60
    assert all(n.startswith("suite:lib-") or n.startswith("suite:gen-") for n in names)


def _zero_ablation_exceptions() -> set:
    """Programs whose zero-ablation AUC of exact patching is below 1.0, each with its reason,
    as the library and grammar tests check program by program (docs/suite.md#exceptions)."""
    from harness.programs import grammar, library

    return set(library.ZERO_ABLATION_EXCEPTIONS) | set(grammar.ZERO_ABLATION_EXCEPTIONS)


def test_the_zero_ablation_exceptions_are_suite_programs_with_reasons():
    from harness.programs import grammar, library

    assert _zero_ablation_exceptions() <= {t.removeprefix("suite:") for t in suite_tasks()}
    reasons = set(library.ZERO_ABLATION_EXCEPTIONS.values()) | set(grammar.ZERO_ABLATION_EXCEPTIONS.values())
    assert reasons == {library.SATURATED, grammar.INERT, grammar.BOS_POSITION}


@pytest.mark.xfail(strict=True, reason="issue 17 asks for AUC 1.0 on >= 90% of the suite; with the run's tie floor and "
                   "the zero-matched ground truth it is 57 of 68 (84%): 2 saturated, 4 inert, 5 BOS-position "
                   "exceptions (docs/suite.md#exceptions)")
def test_exact_patching_scores_auc_1_under_zero_ablation_on_90_percent_of_the_suite():
    assert 1 - len(_zero_ablation_exceptions()) / len(suite_tasks()) >= 0.9


def test_presets_name_suite_tasks_and_known_methods():
    assert set(PRESETS) == {"suite-quick", "suite", "trained"}  # trained: tests/test_siit.py
    quick, full = get_preset("suite-quick"), get_preset("suite")
    assert set(quick.tasks) < set(full.tasks) == set(suite_tasks())
    assert {"suite:" + n for n in QUICK_LIBRARY} < set(quick.tasks) and len(quick.tasks) == 14
    assert set(quick.methods) < set(all_methods()) and "grad-wrong" in quick.methods and not full.methods
    with pytest.raises(KeyError, match="suite-quick"):
        get_preset("suite-slow")


def test_register_suite_names_unknown_programs(restore_tasks):
    with pytest.raises(ProgramError, match="unknown suite program.*lib-nope"):
        register_suite(["suite:lib-nope"])
    assert register_suite(["suite:lib-hist-3x4", "lib-count-3x4"]) == ["suite:lib-hist-3x4", "suite:lib-count-3x4"]
    assert "suite:lib-count-3x4" in TASKS


def test_a_preset_run_takes_the_command_lines_overrides(tmp_path, restore_tasks):
    out = tmp_path / "o"
    assert main(["run", "--preset", "suite-quick", "--tasks", "suite:lib-hist-3x4", "suite:lib-frac_prevs-4x5",
                 "--methods", "act-patch-edge", "eap", "--no-progress", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df["task"]) == {"suite:lib-hist-3x4", "suite:lib-frac_prevs-4x5"}
    assert set(df["method"]) == {"act-patch-edge", "eap"}
    assert set(df["control"]) == {"trained"}  # the preset: no reset controls ...
    assert df["auc_lo"].isna().all() and df["cpr"].isna().all()  # ... no bootstrap, no faithfulness
    # scored against the ground truth matched to each reference, among the others
    assert {"structural", "structural-zero"} <= set(df["ground_truth"])
    report = (out / "report.md").read_text()
    assert "## Suite statistics" in report and "The generated suite: 2 compiled circuits" in report
    assert "## Task suite:" not in report  # no section per suite program


def test_an_unknown_suite_task_exits_2_with_one_line(tmp_path, capsys, restore_tasks):
    with pytest.raises(SystemExit) as e:
        main(["run", "--tasks", "suite:gen-nope", "--out", str(tmp_path / "o"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown suite program" in err[0] and "circuit-bench list --suite" in err[0]


def test_list_suite_names_every_program_without_compiling(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUIT_BENCH_CACHE", str(tmp_path))
    assert main(["list", "--suite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"Suite programs ({len(suite_tasks())};")
    assert [ln.split()[0] for ln in lines[1:]] == suite_tasks()
    assert not any(tmp_path.iterdir())  # nothing compiled
    assert main(["list", "--suite", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert {r["source"] for r in rows} >= {"tracr lib"} and len(rows) == len(suite_tasks())


def test_suite_seeds_rederives_the_shipped_seeds(capsys, restore_tasks):
    from harness.programs.grammar import GENERATED_SEEDS

    assert main(["suite-seeds", "--select", "3", "--show", str(GENERATED_SEEDS[0])]) == 0
    out = capsys.readouterr().out
    assert f"# gen-{GENERATED_SEEDS[0]}-" in out and "kept 3 seeds in" in out
    assert str(tuple(GENERATED_SEEDS[:3])) in out
