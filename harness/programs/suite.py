"""The generated suite of compiled circuits (issue 17): tracr's library programs
(`harness.programs.library`, names `lib-...`) and the seeded RASP grammar's
(`harness.programs.grammar`, names `gen-...`), each run as task `suite:<name>`.

Here: their names and a catalogue, without compiling anything. Tasks are made of them by
`harness.tasks.suite_tasks.register_suite(names)`, which compiles (cached), derives and checks
the ground truth of, and registers the programs asked for.
"""
from __future__ import annotations

from harness.programs.grammar import GENERATED
from harness.programs.library import LIBRARY

PREFIX = "suite:"


def suite_tasks() -> list:
    """Every suite task name, the library's first, then the grammar's (seed order)."""
    return [PREFIX + n for n in list(LIBRARY) + list(GENERATED)]


def catalogue() -> list:
    """One dict per suite program (task, source, program, vocab size, length, causal), without
    compiling anything: what `circuit-bench list --suite` prints."""
    rows = []
    for n, p in LIBRARY.items():
        rows.append({"task": PREFIX + n, "source": "tracr lib", "program": f"lib.{p.call}",
                     "vocab": len(p.spec.vocab), "max_seq_len": p.spec.max_seq_len, "causal": p.spec.causal})
    for n, p in GENERATED.items():
        rows.append({"task": PREFIX + n, "source": f"grammar seed {p.seed}",
                     "program": f"depth {p.depth}: " + ", ".join(sorted(p.kinds())),
                     "vocab": len(p.vocab), "max_seq_len": p.max_seq_len, "causal": p.causal})
    return rows
