"""The worker's side of a sweep on a cluster: units of work run where Ray or SLURM puts them.

A unit is one job of the runner (task, method, variant, reference, control) with what the driver
knows of it: the fingerprint of its finished record in the store, if one is there. A worker loads
the unit's task once per process (`_LOADED`, so the weights, the compiled tracr model and the data
are built once per worker, not once per unit; a long-lived Ray worker keeps them for the next
sweep with the same options), decides as the local runner does whether the stored
record can be reused, and returns the record for the driver to write (`harness.run.sweep`). The
worker writes nothing: the driver's folder is the one results store.

`run_units` is the function the executors submit; it takes and returns only picklable values.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from harness.methods import all_methods
from harness.run.fingerprint import differences
from harness.run.runner import LoadedTask, RunConfig, _load_task, fingerprint_of, perform, run_metadata
from harness.run.store import edge_record


@dataclass(frozen=True)
class Setup:
    """What the driver registered before planning, which a fresh worker process must register too:
    plugins (`--plugin`), programs users bring (`--program` files) and suite programs (`suite:`).
    Files must be at the same path on the workers (a shared folder on a cluster)."""

    plugins: tuple = ()
    programs: tuple = ()
    suite: tuple = ()


@dataclass(frozen=True)
class Unit:
    job: tuple  # (task, method, variant, reference, control)
    stored: bool = False  # the store holds a finished (status ok) record of the job
    fingerprint: dict | None = None  # that record's fingerprint
    want_reset: bool = False  # reset controls are asked for on the job's task (how it is loaded)
    facts: bool = False  # send the task's facts back (the driver has not had them yet)


@dataclass
class UnitResult:
    """A unit's outcome: `record` to write, or None when the stored one is reused; `changed`: why a
    stored record was recomputed (empty when none was stored); `facts`: when the unit asked for them
    (`Unit.facts`), the task's lines for meta.json, its edges file and the lines said loading it."""

    job: tuple
    record: dict | None
    changed: list = field(default_factory=list)
    facts: dict | None = None
    worker: str = ""  # host:pid
    seconds: float = 0.0


_LOADED: OrderedDict = OrderedDict()  # (task, load options) -> (LoadedTask, facts): this process's tasks
KEEP_LOADED = 2  # tasks kept per process; a sweep's units come task by task, so 2 covers the change-over
_SET_UP: set = set()


def _key(cfg: RunConfig, task: str, want_reset: bool) -> tuple:
    opts = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("tasks", "methods", "variants", "out",
                                                                          "fresh", "progress", "methods_explicit")}
    return task, want_reset, repr(sorted(opts.items()))


def _loaded(cfg: RunConfig, task: str, want_reset: bool) -> tuple:
    """(LoadedTask, facts): the task as this process holds it, loaded on first use."""
    key = _key(cfg, task, want_reset)
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    while len(_LOADED) >= KEEP_LOADED:
        _LOADED.popitem(last=False)
    lines: list = []
    meta = run_metadata(cfg)
    loaded = _load_task(task, cfg, meta, lines.append, want_reset=want_reset)
    from harness.eval.bootstrap import ground_truth_masks

    edges = (edge_record(task, loaded.graph, ground_truth_masks(loaded.task, loaded.graph)[0])
             if loaded.graph is not None else None)
    facts = {"tasks": meta["tasks"], "layers": meta.get("layers", {}), "edges": edges, "log": lines}
    _LOADED[key] = (loaded, facts)
    return loaded, facts


def set_up(setup: Setup) -> None:
    """Register what `setup` names in this process, once (a worker, or the driver itself under
    submitit's debug executor, where all of it is registered already)."""
    if setup in _SET_UP:
        return
    import sys
    from pathlib import Path

    from harness.methods.registry import load_entry_point_plugins, load_plugin
    from harness.tasks import TASKS

    load_entry_point_plugins()
    for spec in setup.plugins:
        if not (spec.endswith(".py") and f"circuit_bench_plugin_{Path(spec).stem}" in sys.modules):
            load_plugin(spec)
    if setup.programs:
        from harness.tasks.program_task import register_programs

        register_programs(list(setup.programs))
    missing = [s for s in setup.suite if s not in TASKS]
    if missing:
        from harness.tasks.suite_tasks import register_suite

        register_suite(missing)
    _SET_UP.add(setup)


def run_units(cfg: RunConfig, setup: Setup, units: list) -> list:
    """Run `units` (list of Unit) in this process, in order, and return their UnitResults. The
    device is resolved here, on the worker (`auto` picks the worker's GPU)."""
    from harness.core.device import resolve_device

    set_up(setup)
    cfg = dataclasses.replace(cfg, device=str(resolve_device(cfg.device)), progress=False)
    who = f"{socket.gethostname()}:{os.getpid()}"
    out = []
    for u in units:
        t0 = time.perf_counter()
        loaded, facts = _loaded(cfg, u.job[0], u.want_reset)
        out.append(_one(loaded, u, cfg, facts if u.facts else None, who, t0))
    return out


def _one(loaded: LoadedTask, u: Unit, cfg: RunConfig, facts, who: str, t0: float) -> UnitResult:
    fp, changed = None, []
    if loaded.runs(all_methods()[u.job[1]], u.job[4]) is not None:
        fp = fingerprint_of(loaded, u.job, cfg)
        if u.stored:
            changed = differences(u.fingerprint, fp)
            if not changed:
                return UnitResult(u.job, None, [], facts, who, time.perf_counter() - t0)
    lines: list = []
    record = perform(loaded, u.job, cfg, fp, lines.append)
    if facts is not None:
        facts = {**facts, "log": facts["log"] + lines}
    elif lines:
        facts = {"log": lines}
    return UnitResult(u.job, record, changed, facts, who, time.perf_counter() - t0)
