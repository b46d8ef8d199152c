"""The command's conventions: comma or space lists, --version, -q/-v, warnings, a compact list."""
import pytest

from harness.cli import build_parser, main

TINY = ["run", "--tasks", "tracr-xproportion", "--bootstrap", "0", "--no-faithfulness", "--no-progress",
        "--ablation", "zero"]


def test_lists_take_commas_or_spaces_and_keep_their_choices(capsys):
    a = build_parser().parse_args(["run", "--tasks", "a,b", "c", "--ablation", "zero,resample", "--methods", "eap,"])
    assert a.tasks == ["a", "b", "c"] and a.ablation == ["zero", "resample"] and a.methods == ["eap"]
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["run", "--ablation", "zero,mean"])
    assert e.value.code == 2 and "invalid choice: 'mean'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("circuit-bench 0.")


def test_quiet_says_only_the_result_and_verbose_a_line_per_run(tmp_path, capsys):
    assert main(["-q", *TINY, "--methods", "random", "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("wrote ") and "report.html" in out[0]
    assert main(["-v", *TINY, "--methods", "random", "--out", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    assert "compiling its RASP program" in out and "random/uniform, zero: ok in" in out


def test_variants_that_leave_a_named_method_nothing_to_run_are_warned_about(tmp_path, capsys):
    with pytest.warns(UserWarning) as said:
        assert main([*TINY, "--methods", "random,eap", "--variants", "noising", "--out", str(tmp_path / "o")]) == 0
    lines = [str(w.message) for w in said]
    assert len(lines) == 1 and lines[0].startswith("--variants names no variant of random, so random does not run")


def test_list_shows_grad_wrong_as_a_grid_describing_each_target_once(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.count("the seed's: MSE") == 1 and "variants are ROW/COLUMN" in out
    row = next(ln for ln in out.splitlines() if ln.strip().startswith("logit-diff-mse") and "*" in ln)
    assert row.count("*") == 5  # every site of the seed's target runs by default


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`circuit-bench graph ... | head -3`: the closed pipe is no error message (as other Unix tools)."""
    import subprocess
    import sys

    cmd = f"{sys.executable} -m harness.cli graph --model gemma-2-2b --names | head -3"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[0] == "{" and len(out.stdout.splitlines()) == 3
    assert out.stderr == ""
