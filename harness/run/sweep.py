"""The driver of a sweep on a cluster (`circuit-bench run --executor ray|slurm`).

The driver plans and records; workers compute. It lists the run's units as the local runner does
(`runner.jobs_for`), tells each unit whether the store holds a finished record of it (and that
record's fingerprint), hands the units to the executor (`harness.run.executors`) and writes each
result to the run folder the moment it comes back: one results store, written by one process, so
records, resume, `--fresh`, the report and `compare` are the local runner's. The driver loads no
model: units that ask (`Unit.facts`) send back their task's lines for meta.json and its edges
file.
"""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from harness.run.executors import Lost
from harness.run.runner import RunConfig, Tally, describe, jobs_for, record_head, run_metadata
from harness.run.store import ResultStore
from harness.run.units import Setup, Unit


def plan(cfg: RunConfig, store: ResultStore, log=print) -> list:
    """The run's units in the local runner's order, each with what the store holds of it."""
    jobs = jobs_for(cfg, log)
    reset_tasks = {j[0] for j in jobs if j[4] == "reset"}
    units = []
    for job in jobs:
        old = store.get(*job)
        ok = bool(old) and old.get("status") == "ok"
        units.append(Unit(job, ok, old.get("fingerprint") if ok else None, job[0] in reset_tasks))
    return units


def run_sweep(cfg: RunConfig, executor, setup: Setup = Setup(), log=print) -> ResultStore:
    """Run every unit of `cfg` on `executor` (a RayExecutor or SlurmExecutor) into `cfg.out`,
    holding the folder's lock as a local run does."""
    store = ResultStore(cfg.out)
    with store.lock():
        if cfg.fresh:
            store.clear()
        return _drive(cfg, store, executor, setup, log)


def _drive(cfg: RunConfig, store: ResultStore, executor, setup: Setup, log) -> ResultStore:
    meta = run_metadata(cfg)
    meta["executor"] = executor.name
    meta_path = Path(cfg.out) / "meta.json"
    units = plan(cfg, store, log)
    tally, lost, heard = Tally(log), 0, set()
    workers: set = set()
    store.root.mkdir(parents=True, exist_ok=True)
    executor.start()  # a missing extra or an unreachable cluster fails here, before anything is shown
    bar = tqdm(total=len(units), disable=not cfg.progress, unit="run", dynamic_ncols=True, desc=executor.name)
    try:
        for res in executor.results(cfg, setup, units):
            if isinstance(res, Lost):
                lost += 1
                log(f"{describe(res.job)} {res.why}")
                store.write({**record_head(*res.job, cfg), "status": "error", "error": res.why, "rows": []})
                bar.update()
                continue
            workers.add(res.worker)
            facts = res.facts or {}
            for line in facts.get("log", []):
                if line not in heard:  # each worker that loads a task says the same: once is enough
                    heard.add(line)
                    log(line)
            if "tasks" in facts:
                meta["tasks"].update(facts["tasks"])
                meta.setdefault("layers", {}).update(facts["layers"])
                meta_path.write_text(json.dumps(meta, indent=1))
                if facts.get("edges") is not None:
                    store.write_edge_record(facts["edges"])
            if res.record is None:
                tally.reused += 1
            else:
                if res.changed:
                    tally.recomputing(res.changed, res.job)
                store.write(res.record)
            bar.update()
    finally:
        bar.close()
        executor.stop()
        store.write_csv()
        store.write_scores()
        meta["workers"] = len(workers)
        meta_path.write_text(json.dumps(meta, indent=1))
    tally.summary(len(units), store.records_dir)
    if lost:
        log(f"{lost} unit(s) could not be finished on the cluster and are recorded as errors; run again to retry them")
    return store
