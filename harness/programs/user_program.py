"""Programs users bring (`circuit-bench run --program FILE`): a Python file defining a RASP
program, compiled with tracr, its structural ground truth derived, and turned into a task
(`harness.tasks.program_task`).

The contract: the file defines

    from tracr.compiler import lib
    from tracr.rasp import rasp

    VOCAB = {"a", "b", "c"}   # required: the input tokens (a collection of hashable values, not a string)
    MAX_SEQ_LEN = 4           # required: the longest input, BOS not counted (an integer >= 1)
    CAUSAL = False            # optional: compile with a causal attention mask (default False)
    NAME = "frac-a"           # optional: the task is `program:<NAME>` (default: the file's stem)

    def program():            # required: returns the program's output, a RASP SOp that reads rasp.tokens
        return lib.make_frac_prevs(rasp.tokens == "a")

The file is executed afresh (as a module of its own, not imported into `sys.modules` under its
own name) each time the program is built, after tracr's label counter is reset, so the compiled
layout is reproducible; the compiled weights are cached (`tracr_models.cache_dir()`) keyed by the
file's whole text and every compiler setting, so editing the file recompiles it.

What is refused, each with a one-line `ProgramError` naming the reason: a file that cannot be
read or executed, a missing or malformed `program` / `VOCAB` / `MAX_SEQ_LEN` / `CAUSAL` /
`NAME`, a `program()` that raises or returns no RASP SOp, a program tracr cannot compile, and a
program whose structural circuit has no edges, no attention head, or no off-circuit edges (AUCs
need both circuit and off-circuit edges; a circuit without a head is not what the benchmark
measures).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import types
from dataclasses import dataclass, replace
from pathlib import Path

from harness.programs.rasp_programs import ProgramSpec

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SOURCE = ("derived from the compiled weights of a user's RASP program (circuit-bench run --program) by "
          "harness.programs.structural_gt; no discovery run")


class ProgramError(ValueError):
    """A user program that cannot become a task; the message is one line and names the reason."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass(frozen=True)
class UserProgram:
    path: Path
    name: str  # NAME: the task is program:<name>
    text: str  # the file's text (the compiled-weights cache key)
    spec: ProgramSpec

    @property
    def task_name(self) -> str:
        return f"program:{self.name}"


def _execute(path: Path, text: str) -> types.ModuleType:
    """The file run as a fresh module (its own name, so two programs never share one)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    name = f"circuit_bench_program_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickling in the file look their module up
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module


def _builder(path: Path, text: str):
    def build():
        return _execute(path, text).program()

    build.cache_source = text  # tracr_models keys the cache on this, not on `build`'s own source
    return build


def _vocab(value, where: str) -> tuple:
    fix = "set VOCAB to a collection of the input tokens, e.g. VOCAB = {'a', 'b', 'c'}"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ProgramError(f"{where}: VOCAB is {type(value).__name__} {value!r}, not a collection of tokens; {fix}")
    tokens = list(value)
    if not tokens:
        raise ProgramError(f"{where}: VOCAB is empty; {fix}")
    for t in tokens:
        try:
            hash(t)
        except TypeError:
            raise ProgramError(f"{where}: VOCAB holds {t!r}, which is not hashable; {fix}") from None
        if t is None or str(t) in ("BOS", "compiler_pad"):
            raise ProgramError(f"{where}: VOCAB holds {t!r}, which tracr reserves (None, BOS, compiler_pad); {fix}")
    as_text = [str(t) for t in tokens]
    if len(set(as_text)) != len(set(tokens)):
        raise ProgramError(f"{where}: VOCAB holds two tokens that print the same (e.g. 1 and '1'); {fix}")
    return tuple(sorted(set(tokens), key=str))


def load(path) -> UserProgram:
    """Read and check a program file (the contract in the module docstring); nothing is compiled."""
    from tracr.rasp import rasp

    path = Path(path)
    where = str(path)
    if path.suffix != ".py":
        raise ProgramError(f"--program {where}: not a .py file; give the Python file that defines program(), VOCAB "
                           "and MAX_SEQ_LEN")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProgramError(f"--program {where}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProgramError(f"--program {where}: cannot be read ({_one_line(e)})") from None
    try:
        module = _execute(path, text)
    except Exception as e:  # the file's own error
        raise ProgramError(f"{where} failed to run: {_one_line(e)}") from None
    fn = getattr(module, "program", None)
    if fn is None:
        raise ProgramError(f"{where} defines no program(): add a function program() that returns the RASP "
                           "program's output (see docs/tasks.md#programs-you-bring)")
    if not callable(fn):
        raise ProgramError(f"{where}: program is {type(fn).__name__}, not a function; define program() returning "
                           "a RASP expression")
    for attr in ("VOCAB", "MAX_SEQ_LEN"):
        if not hasattr(module, attr):
            example = "VOCAB = {'a', 'b', 'c'}" if attr == "VOCAB" else "MAX_SEQ_LEN = 5"
            raise ProgramError(f"{where} defines no {attr}: add e.g. {example} at module level")
    vocab = _vocab(module.VOCAB, where)
    n = module.MAX_SEQ_LEN
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ProgramError(f"{where}: MAX_SEQ_LEN is {n!r}; set it to an integer of at least 1 (the longest input, "
                           "BOS not counted)")
    causal = getattr(module, "CAUSAL", False)
    if not isinstance(causal, bool):
        raise ProgramError(f"{where}: CAUSAL is {causal!r}; set it to True or False")
    name = getattr(module, "NAME", None)
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "program"
    elif not (isinstance(name, str) and NAME_RE.fullmatch(name)):
        raise ProgramError(f"{where}: NAME is {name!r}; use letters, digits, '_', '-' and '.', starting with a letter "
                           "or digit")
    try:
        out = fn()
    except Exception as e:
        raise ProgramError(f"{where}: program() raised {_one_line(e)}") from None
    if not isinstance(out, rasp.SOp):
        raise ProgramError(f"{where}: program() returned {type(out).__name__}, not a RASP sequence (rasp.SOp, e.g. "
                           "rasp.Map(...) or rasp.Aggregate(...))")
    spec = ProgramSpec(f"program-{name}", _builder(path, text), vocab, max_seq_len=n, causal=causal)
    return UserProgram(path, name, text, spec)


def compile_user_program(up: UserProgram):
    """The compiled, converted model (`tracr_models.TracrModel`), cached on disk."""
    from harness.programs.tracr_models import load_tracr

    try:
        return load_tracr(up.spec)
    except OSError:
        raise  # the cache folder, not the program: the CLI reports it as such
    except Exception as e:
        raise ProgramError(f"tracr cannot compile {up.path}: {_one_line(e)}") from None


def check_circuit(mask, graph, where: str) -> None:
    """Refuse a structural circuit a benchmark cannot score: no edges, no attention head in it, or
    every edge of the graph in it (no off-circuit edges)."""
    n = int(mask.sum())
    if n == 0:
        raise ProgramError(f"{where}: its structural circuit has no edges (the output reads nothing the inputs "
                           "write), so there is nothing to find")
    if bool(mask.all()):
        raise ProgramError(f"{where}: its structural circuit holds every edge of the model's graph ({n}), so "
                           "there are no off-circuit edges to tell apart from circuit edges")
    add = mask[: graph.n_add].nonzero().flatten().tolist()
    if not any(graph.senders[int(graph.add_sender[e])].kind == "head" for e in add):
        raise ProgramError(f"{where}: its structural circuit has no attention head (only MLPs: no Select/Aggregate "
                           "reaches the output), so there is no circuit of heads to discover; use a program "
                           "with an Aggregate or SelectorWidth")


def spec_ground_truths(spec: ProgramSpec, model, where: str, source: str = SOURCE, tokens=None) -> dict:
    """variant -> GroundTruth (task `spec.name`) of a compiled program's structural circuit,
    checked by `check_circuit` (`where` names the program in its refusal); `tokens` [batch, pos]:
    the inputs it is evaluated on (structural_gt.edge_mask)."""
    from harness.core.graph import Graph
    from harness.programs.structural_gt import derive_all, edge_mask

    graph = Graph(model.weights.cfg)
    check_circuit(edge_mask(model, "structural", graph), graph, where)
    return {k: replace(gt, source=source) for k, gt in derive_all(spec.name, model, tokens).items()}


def ground_truths(up: UserProgram, model, tokens=None) -> dict:
    """variant -> GroundTruth of the program's structural circuit (checked by `check_circuit`)."""
    return spec_ground_truths(up.spec, model, str(up.path), tokens=tokens)


def spec_ground_truth_folder(spec: ProgramSpec, name: str) -> Path:
    """`cache_dir()/programs/<name>-<compiled-weights key>/`: a compiled program's ground truths."""
    from harness.programs.tracr_models import _cache_key, cache_dir

    return cache_dir() / "programs" / f"{name}-{_cache_key(spec)}"


def ground_truth_folder(up: UserProgram) -> Path:
    return spec_ground_truth_folder(up.spec, up.name)


def write_ground_truths(gts: dict, folder: Path) -> Path:
    """Write `<program-NAME>.<variant>.json` files into `folder` (atomically, only when changed)."""
    from harness.core.ground_truth import save_ground_truth

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{os.getpid()}"
    try:
        written = []
        for gt in gts.values():
            new = save_ground_truth(gt, tmp)
            final = folder / new.name
            if final.exists() and final.read_bytes() == new.read_bytes():
                new.unlink()
            else:
                os.replace(new, final)
            written.append(final.name)
        task = next(iter(gts.values())).task
        for stale in folder.glob(f"{task}.*.json"):
            if stale.name not in written:
                stale.unlink()
    finally:
        if tmp.exists():
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()
    return folder


def prepare(path) -> tuple:
    """(UserProgram, compiled TracrModel, its ground-truth folder) of a program file, the file's
    and the compiler's checks done (the ground truths are written by the task, on its inputs)."""
    up = load(path)
    return up, compile_user_program(up), ground_truth_folder(up)
