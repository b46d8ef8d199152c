"""The generated suite of compiled circuits (issue 17): tracr's library programs
(`harness.programs.library`, names `lib-...`) and the seeded RASP grammar's
(`harness.programs.grammar`, names `gen-...`), each run as task `suite:<name>`.

Nothing compiles at import: `register_suite(names)` compiles (cached), derives and checks the
ground truth of, and registers the programs asked for; `suite_tasks()` lists every task name
without compiling anything.
"""
from __future__ import annotations

PREFIX = "suite:"


def _library() -> dict:
    from harness.programs.library import LIBRARY

    return LIBRARY


def _generated() -> dict:
    from harness.programs.grammar import GENERATED

    return GENERATED


def suite_tasks() -> list:
    """Every suite task name, the library's first, then the grammar's (seed order)."""
    return [PREFIX + n for n in list(_library()) + list(_generated())]


def register_suite(names=None) -> list:
    """Register the suite tasks `names` (with or without `suite:`; default: all) and return their
    task names; a ProgramError names every unknown or unusable program."""
    from harness.programs.grammar import register_generated
    from harness.programs.library import register_library
    from harness.programs.user_program import ProgramError

    wanted = [n.removeprefix(PREFIX) for n in names] if names else [t.removeprefix(PREFIX) for t in suite_tasks()]
    lib, gen = _library(), _generated()
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


def catalogue() -> list:
    """One dict per suite program (task, source, program, vocab size, length, causal), without
    compiling anything: what `circuit-bench list --suite` prints."""
    rows = []
    for n, p in _library().items():
        rows.append({"task": PREFIX + n, "source": "tracr lib", "program": f"lib.{p.call}",
                     "vocab": len(p.spec.vocab), "max_seq_len": p.spec.max_seq_len, "causal": p.spec.causal})
    for n, p in _generated().items():
        rows.append({"task": PREFIX + n, "source": f"grammar seed {p.seed}",
                     "program": f"depth {p.depth}: " + ", ".join(sorted(p.kinds())),
                     "vocab": len(p.vocab), "max_seq_len": p.max_seq_len, "causal": p.causal})
    return rows
