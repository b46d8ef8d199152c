"""The generated suite's programs as tasks `suite:<name>` (docs/suite.md). The programs are
defined in harness.programs: tracr's library (`library`) and the seeded grammar (`grammar`);
here they are compiled (cached), given their data and ground truths and registered
(`register_spec`), and the grammar's seeds are selected, which builds each candidate's task to
check it: `circuit-bench suite-seeds --select 48` re-derives GENERATED_SEEDS.
"""
from __future__ import annotations

import time

from harness.programs import grammar, library
from harness.programs.grammar import (GENERATED, MAX_EDGES, MIN_CHANGE, REASONS, GeneratedProgram,
                                      generate, precheck, reason_of)
from harness.programs.library import LIBRARY, LibraryProgram
from harness.programs.suite import PREFIX, suite_tasks


def register_library_program(p: LibraryProgram) -> str:
    """Compile, check and register one library program as task `suite:<name>` (a ProgramError
    says why it cannot be); returns the task name."""
    from harness.tasks.program_task import register_spec

    return register_spec(
        p.spec, p.task_name, where=f"tracr's lib.{p.call} ({p.name})", source=library.SOURCE,
        distinct_tokens=p.distinct_tokens,
        description=f"tracr lib.{p.call}: {len(p.spec.vocab)} tokens, length {p.spec.max_seq_len}"
                    + (", causal" if p.spec.causal else ""),
        doc=f"tracr's library program lib.{p.call} over {p.spec.vocab}, length {p.spec.max_seq_len} "
            f"(harness.programs.library).",
    )


def build_library(names=None, programs: dict | None = None) -> tuple:
    """(task name -> seconds to compile and register, program name -> one-line reason it failed)
    for the programs `names` (default: every one) of `programs` (default: LIBRARY). A failure is
    recorded, never dropped silently; the tasks of the others are registered."""
    from harness.programs.user_program import ProgramError

    programs = LIBRARY if programs is None else programs
    done, failed = {}, {}
    for name in (names or list(programs)):
        t0 = time.perf_counter()
        try:
            task = register_library_program(programs[name])
            done[task] = time.perf_counter() - t0
        except ProgramError as e:
            failed[name] = str(e)
    return done, failed


def register_library(names=None) -> list:
    """Register `suite:<name>` for the shipped programs `names` (library names, with or without
    `suite:`; default: all) and return the task names; raises ProgramError naming any that failed."""
    from harness.programs.user_program import ProgramError

    wanted = [n.removeprefix("suite:") for n in names] if names else list(LIBRARY)
    unknown = [n for n in wanted if n not in LIBRARY]
    if unknown:
        raise ProgramError(f"unknown suite program(s) {', '.join(unknown)}; known: "
                           + ", ".join(f"suite:{n}" for n in LIBRARY))
    done, failed = build_library(wanted)
    if failed:
        raise ProgramError("; ".join(f"{k}: {v}" for k, v in failed.items()))
    return list(done)


def check_registered(p: GeneratedProgram, task) -> dict:
    """The checks after register_spec: an MLP on the circuit, the compiled model agreeing with
    RASP on the task's inputs, the graph's size. Returns graph / ground-truth sizes."""
    import torch

    from harness.core.engine import Engine
    from harness.core.graph import Graph
    from harness.programs.structural_gt import edge_mask
    from harness.programs.user_program import ProgramError

    m = task.tracr()
    g = Graph(m.weights.cfg)
    mask = edge_mask(m, "structural", g)
    add = mask[: g.n_add].nonzero().flatten().tolist()
    comps = ({g.senders[int(g.add_sender[e])].kind for e in add}
             | {g.receivers[int(g.add_receiver[e])].kind for e in add})
    if "mlp" not in comps:
        raise ProgramError(f"{p.name}: its structural circuit has {REASONS['no MLP']}")
    if g.n_edges > MAX_EDGES:
        raise ProgramError(f"{p.name}: its graph has {g.n_edges} {REASONS['too many edges']} ({MAX_EDGES})")
    seqs = task.inputs("validation", 0)[0][:20]
    program = p.spec.build()
    out = Engine(m.weights.to(dtype=torch.float64)).logits(m.encode(seqs))[:, 1:]
    for row, s in zip(out, seqs):
        want = program(list(s))
        if m.categorical_output:
            values = [lab.split(":", 1)[1] for lab in m.output_labels]
            got = [values[i] if v > 0.5 else "None" for i, v in zip(row.argmax(-1).tolist(), row.amax(-1).tolist())]
            ok = got == [str(v) for v in want]
        else:
            ok = torch.allclose(row[:, 0], torch.tensor([float(v) for v in want], dtype=row.dtype), atol=1e-3)
        if not ok:
            raise ProgramError(f"{p.name}: {REASONS['RASP mismatch']} on input {s}")
    d = task.data()
    eng = Engine(task.load_model(dtype=torch.float64))
    changed = (eng.logits(d.clean) - eng.logits(d.corrupted))[:, 1:].abs().flatten(1).amax(-1)
    if not (changed > MIN_CHANGE).all():
        raise ProgramError(f"{p.name}: {REASONS['noise']} ({float(changed.min()):.1e})")
    return {"n_edges": g.n_edges, "gt_edges": int(mask.sum()), "n_layers": m.weights.cfg.n_layers}


def register_generated_program(p: GeneratedProgram) -> str:
    """Compile, check and register one generated program as task `suite:<name>`."""
    from harness.tasks.program_task import register_spec

    return register_spec(
        p.spec, p.task_name, where=f"the generated RASP program {p.name} (harness.programs.grammar)", source=grammar.SOURCE,
        description=f"generated RASP program (seed {p.seed}, depth {p.depth}: {', '.join(sorted(p.kinds()))}): "
                    f"{len(p.vocab)} tokens, length {p.max_seq_len}" + (", causal" if p.causal else ""),
        doc=f"The RASP program drawn by harness.programs.grammar.generate({p.seed}):\n{p.text}",
    )


def check(seed: int, seen_texts=()) -> tuple:
    """(kept?, message): every selection criterion of the module docstring, for one seed. The
    task is registered while checking and removed again."""
    from harness.programs.user_program import ProgramError
    from harness.tasks import TASKS, get_task

    p = generate(seed)
    if p.text in seen_texts:
        return False, f"{p.name}: {REASONS['duplicate']}"
    saved = dict(TASKS)
    try:
        precheck(p)
        check_registered(p, get_task(register_generated_program(p)))
        return True, ""
    except ProgramError as e:
        return False, str(e)
    finally:
        TASKS.clear()
        TASKS.update(saved)


def select(n: int, start: int = 0, log=None) -> tuple:
    """(the first n kept seeds from `start` on, rejected seed -> message)."""
    kept, rejected, texts = [], {}, set()
    seed = start
    while len(kept) < n:
        ok, msg = check(seed, texts)
        if ok:
            kept.append(seed)
            texts.add(generate(seed).text)
        else:
            rejected[seed] = msg
        if log:
            log(f"seed {seed}: " + ("kept" if ok else f"rejected ({reason_of(msg)}): {msg}"))
        seed += 1
    return kept, rejected


def build_generated(names=None) -> tuple:
    """(task name -> seconds to compile and register, program name -> one-line reason it failed)
    for the shipped generated programs `names` (default: all)."""
    from harness.programs.user_program import ProgramError

    done, failed = {}, {}
    for name in (names or list(GENERATED)):
        t0 = time.perf_counter()
        try:
            done[register_generated_program(GENERATED[name])] = time.perf_counter() - t0
        except ProgramError as e:
            failed[name] = str(e)
    return done, failed


def register_generated(names=None) -> list:
    """Register `suite:<name>` for the shipped generated programs `names` (with or without
    `suite:`; default: all) and return the task names; raises ProgramError naming any failure."""
    from harness.programs.user_program import ProgramError

    wanted = [n.removeprefix("suite:") for n in names] if names else list(GENERATED)
    unknown = [n for n in wanted if n not in GENERATED]
    if unknown:
        raise ProgramError(f"unknown generated program(s) {', '.join(unknown)}")
    done, failed = build_generated(wanted)
    if failed:
        raise ProgramError("; ".join(f"{k}: {v}" for k, v in failed.items()))
    return list(done)


def register_suite(names=None) -> list:
    """Register the suite tasks `names` (with or without `suite:`; default: all) and return their
    task names; a ProgramError names every unknown or unusable program."""
    from harness.programs.user_program import ProgramError

    wanted = [n.removeprefix(PREFIX) for n in names] if names else [t.removeprefix(PREFIX) for t in suite_tasks()]
    lib, gen = LIBRARY, GENERATED
    unknown = [n for n in wanted if n not in lib and n not in gen]
    if unknown:
        raise ProgramError(f"unknown suite program(s) {', '.join(unknown)}: `circuit-bench list --suite` names them "
                           f"({len(lib)} of tracr's library, {len(gen)} generated)")
    done = []
    errors = []
    for register, table in ((register_library, lib), (register_generated, gen)):
        mine = [n for n in wanted if n in table]
        if mine:
            try:
                done += register(mine)
            except ProgramError as e:
                errors.append(str(e))
    if errors:
        raise ProgramError("; ".join(errors))
    order = {PREFIX + n: i for i, n in enumerate(wanted)}
    return sorted(done, key=order.get)
