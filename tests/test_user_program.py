"""Programs users bring: `circuit-bench run --program FILE` (harness.programs.user_program,
harness.tasks.program_task), on the fixtures in tests/fixtures/programs/."""
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import tasks_restored
from harness.cli import main
from harness.core.engine import Engine
from harness.programs.tracr_models import compile_program
from harness.programs.user_program import ProgramError, check_circuit, compile_user_program, load
from harness.tasks import get_task
from harness.tasks.program_task import register_program
from test_tracr import assert_reproduces_tracr

PROGRAMS = Path(__file__).parent / "fixtures" / "programs"
FRAC = PROGRAMS / "frac_vowels.py"  # numerical: an MLP (is_vowel), then a head averaging it
HIST = PROGRAMS / "histogram.py"  # categorical: SelectorWidth (a head and an MLP)
QUICK = ["--methods", "eap", "act-patch-edge", "--no-progress", "--bootstrap", "0"]


@pytest.fixture(autouse=True)
def _registry_restored():
    """Program tasks registered here do not outlive the test (other tests list every task)."""
    with tasks_restored():
        yield


def test_the_contract_is_read_into_a_program_spec():
    up = load(FRAC)
    assert up.name == "frac-vowels" and up.task_name == "program:frac-vowels"
    assert up.spec.vocab == ("a", "b", "c", "e") and up.spec.max_seq_len == 4 and up.spec.causal is False
    assert up.spec.build.cache_source == FRAC.read_text()
    assert load(HIST).name == "histogram"  # NAME defaults to the file's stem


@pytest.mark.parametrize("path", [FRAC, HIST], ids=lambda p: p.stem)
def test_the_compiled_program_reproduces_tracr_on_its_data(path):
    up = load(path)
    task = get_task(register_program(path))
    d = task.data()
    assert d.n >= 20 and d.categorical == (path == HIST)
    assert not torch.equal(d.clean, d.corrupted) and (d.clean[:, 0] == d.clean[0, 0]).all()  # BOS first
    _, tm = compile_program(up.spec)  # tracr's own model, compiled afresh
    seqs = task.inputs("validation", 0)[0]
    assert_reproduces_tracr(compile_user_program(up), tm, seqs[:20])


def test_data_splits_are_disjoint_and_the_corruption_changes_every_output():
    task = get_task(register_program(FRAC))
    val, test = task.data("validation"), task.data("test")
    assert not {tuple(r) for r in val.clean.tolist()} & {tuple(r) for r in test.clean.tolist()}
    assert val.clean.shape == (50, 5) and torch.equal(val.clean, task.data("validation").clean)  # seeded
    engine = Engine(task.load_model(dtype=torch.float64))
    changed = (engine.logits(val.clean) - engine.logits(val.corrupted))[:, 1:, 0].abs().amax(-1)
    assert (changed > 1e-6).all()
    gts = task.ground_truths()
    assert set(gts) == {"structural"} and gts["structural"].n_edges == 8  # frac_prevs' mean: every query matches
    assert Path(task.ground_truth_paths()[0]).parent == task.ground_truth_dir


def test_run_program_end_to_end(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "--program", str(FRAC), *QUICK, "--out", str(out)]) == 0
    assert "(16 runs ok)" in capsys.readouterr().out  # (eap 3 + act-patch-edge 1 variants) x 2 refs x 2 controls
    df = pd.read_csv(out / "results.csv")
    assert set(df["task"]) == {"program:frac-vowels"}
    auc = df[(df.level == "edge") & (df.ground_truth == "structural")]
    assert len(auc) == 16 and auc["auc"].notna().all()
    exact = auc[(auc.method == "act-patch-edge") & (auc.control == "trained")].set_index("ablation")["auc"]
    assert exact["zero"] == 1.0 and exact["resample"] == 1.0  # exact edge patching recovers the circuit


def test_a_program_runs_beside_named_tasks(tmp_path):
    out = tmp_path / "o"
    assert main(["run", "--tasks", "tracr-reverse", "--program", str(FRAC), "--methods", "random", "--ablation", "zero",
                 "--controls", "trained", "--no-progress", "--bootstrap", "0", "--no-faithfulness",
                 "--out", str(out)]) == 0
    assert set(pd.read_csv(out / "results.csv")["task"]) == {"tracr-reverse", "program:frac-vowels"}


def _file(tmp: Path, text: str, name: str = "p.py") -> Path:
    p = tmp / name
    p.write_text("from tracr.rasp import rasp\n" + text)
    return p


OK = "VOCAB = {'a', 'b'}\nMAX_SEQ_LEN = 3\n"
BROKEN = [  # (id, file (a fixture, or text written to a temp file), what the one line says)
    ("uncompilable", PROGRAMS / "uncompilable.py", "tracr cannot compile"),
    ("no-head", PROGRAMS / "mlp_only.py", "its structural circuit has no attention head"),
    ("no-program", PROGRAMS / "no_program.py", "defines no program(): add a function program()"),
    ("no-vocab", "MAX_SEQ_LEN = 3\ndef program(): return rasp.tokens\n", "defines no VOCAB"),
    ("vocab-string", "VOCAB = 'ab'\nMAX_SEQ_LEN = 3\ndef program(): return rasp.tokens\n",
     "not a collection of tokens"),
    ("vocab-bos", "VOCAB = {'a', 'BOS'}\nMAX_SEQ_LEN = 3\ndef program(): return rasp.tokens\n", "tracr reserves"),
    ("max-len-zero", "VOCAB = {'a'}\nMAX_SEQ_LEN = 0\ndef program(): return rasp.tokens\n", "MAX_SEQ_LEN is 0"),
    ("causal-not-bool", OK + "CAUSAL = 'yes'\ndef program(): return rasp.tokens\n", "CAUSAL is 'yes'"),
    ("bad-name", OK + "NAME = 'a b'\ndef program(): return rasp.tokens\n", "NAME is 'a b'"),
    ("returns-no-sop", OK + "def program(): return 3\n", "program() returned int, not a RASP sequence"),
    ("program-raises", OK + "def program(): raise KeyError('oops')\n", "program() raised KeyError"),
    ("file-raises", "import no_such_module_here\n", "failed to run: ModuleNotFoundError"),
    ("missing-file", None, "no such file"),
    ("constant-output", OK + "def program():\n    return rasp.numerical(rasp.Aggregate(rasp.Select(rasp.tokens, "
     "rasp.tokens, rasp.Comparison.TRUE), rasp.numerical(rasp.Map(lambda t: 1, rasp.tokens)), default=0))\n",
     "gives the same output on every input"),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_a_broken_program_exits_2_with_one_line(case, tmp_path, capsys):
    name, src, says = case
    path = src if isinstance(src, Path) else tmp_path / "nope.py" if src is None else _file(tmp_path, src)
    with pytest.raises(SystemExit) as e:
        main(["run", "--program", str(path), *QUICK, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("circuit-bench: ") and err.strip().count("\n") == 0, err
    assert says in err and str(path) in err, err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_two_programs_with_one_name_are_refused(tmp_path, capsys):
    other = _file(tmp_path, FRAC.read_text().replace("VOCAB = {", "VOCAB = {'z', "), "other.py")
    with pytest.raises(SystemExit) as e:
        main(["run", "--program", str(FRAC), "--program", str(other), *QUICK, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "are both named program:frac-vowels: set NAME" in capsys.readouterr().err


def test_a_circuit_with_no_off_circuit_edges_or_no_edges_is_refused():
    from harness.core.architectures import ARCHITECTURES
    from harness.core.graph import Graph

    g = Graph(ARCHITECTURES["tracr-xproportion"])
    with pytest.raises(ProgramError, match="no off-circuit edges"):
        check_circuit(torch.ones(g.n_edges, dtype=torch.bool), g, "p.py")
    with pytest.raises(ProgramError, match="has no edges"):
        check_circuit(torch.zeros(g.n_edges, dtype=torch.bool), g, "p.py")
