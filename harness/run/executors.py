"""Where a sweep's units run when one machine is not enough: a Ray cluster or SLURM (through
submitit). The harness schedules nothing itself; these hand units (`harness.run.units`) to the
cluster's own scheduler and give back their results as they finish, for the driver
(`harness.run.sweep`) to write. Both engines are optional extras:
`pip install "circuit-bench[ray]"` or `"circuit-bench[slurm]"`.

A unit that a worker finishes is never lost: its record comes back to the driver and is written
at once. A unit whose worker dies is tried again (Ray's `max_retries`; SLURM: its job is
resubmitted), and after `retries` more tries it comes back as `Lost`, which the driver records as
an error (a resumed run recomputes it).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import time
from dataclasses import dataclass
from typing import Iterator

from harness.run.runner import RunConfig
from harness.run.units import Setup, run_units


class ExecutorError(ValueError):
    """An executor cannot start: the message is one line naming the fix."""


@dataclass
class Lost:
    """A unit no worker finished after every try: `why` in one line."""

    job: tuple
    why: str


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: " + (text if len(text) <= 300 else text[:297] + "...")


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _job_failure(e: BaseException) -> str:
    """A failed SLURM job's cause in one line: submitit's message holds the job's whole traceback,
    whose last exception line says what went wrong."""
    causes = [ln.strip() for ln in str(e).splitlines()
              if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit|Timeout)\b", ln.strip())]
    return f"{type(e).__name__}: {causes[-1]}" if causes else _one_line(e)


def _import(name: str, extra: str):
    try:
        return __import__(name)
    except ImportError:
        raise ExecutorError(f"--executor {extra} needs {name}, which is not installed: "
                            f'pip install "circuit-bench[{extra}]"') from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after Ray's minute of retries, when nothing listens at `address`
    (host:port, or ray://host:port for Ray Client)."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]\s]+?)\]?:(\d+)", address)
    if m is None:
        raise ExecutorError(f"--ray-address {address!r} is not HOST:PORT (or ray://HOST:PORT, or auto): give the "
                            "address `ray start --head` printed")
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as e:
        raise ExecutorError(f"no Ray cluster answers at {address} ({type(e).__name__}: {e}): start one there with "
                            "`ray start --head`, or leave out --ray-address to start one on this machine") from None


@dataclass
class RayExecutor:
    """Each unit a Ray task on the cluster at `address` (None: a cluster started on this machine
    with `local_cpus` CPUs, all when None), holding `unit_cpus` CPUs and `unit_gpus` GPUs."""

    address: str | None = None
    unit_cpus: float = 1.0
    unit_gpus: float = 0.0
    retries: int = 2  # Ray's max_retries: tries after a worker dies
    local_cpus: int | None = None
    name: str = "ray"

    def start(self) -> None:
        self._started = False
        if self.address not in (None, "auto"):
            _check_reachable(self.address)
        ray = _import("ray", "ray")
        if ray.is_initialized():  # the caller's own session (a notebook, a test): use it as it is
            return
        kw = {"log_to_driver": False, "include_dashboard": False} if self.address is None else {"log_to_driver": False}
        try:
            if self.address is None:
                ray.init(num_cpus=self.local_cpus, **kw)
            else:
                ray.init(address=self.address, **kw)
        except ConnectionError as e:
            raise ExecutorError(f"could not connect to a Ray cluster at {self.address} ({_one_line(e)}): start one "
                                "with `ray start --head`, or leave out --ray-address to start one on this machine") from None
        self._started = True

    def stop(self) -> None:
        import ray

        if getattr(self, "_started", False):
            ray.shutdown()

    def results(self, cfg: RunConfig, setup: Setup, units: list) -> Iterator:
        """UnitResults (and Lost units) as they finish. At most a few units per CPU are in flight,
        submitted in the driver's order (task by task), so a worker mostly meets a task it has loaded."""
        import ray

        remote = ray.remote(run_units).options(num_cpus=self.unit_cpus, num_gpus=self.unit_gpus,
                                               max_retries=self.retries, retry_exceptions=False)
        cfg_ref, setup_ref = ray.put(cfg), ray.put(setup)
        cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1)))
        window = max(4, int(2 * cpus / max(self.unit_cpus, 0.01)))
        todo = list(reversed(units))
        pending: dict = {}
        known: set = set()  # tasks whose facts came back: later units need not send them
        try:
            while todo or pending:
                while todo and len(pending) < window:
                    u = todo.pop()
                    u = dataclasses.replace(u, facts=u.job[0] not in known)
                    pending[remote.remote(cfg_ref, setup_ref, [u])] = u
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    u = pending.pop(ref)
                    try:
                        for res in ray.get(ref):
                            if res.facts and "tasks" in res.facts:
                                known.add(res.job[0])
                            yield res
                    except ray.exceptions.RayTaskError as e:  # the unit's own code raised outside a method
                        yield Lost(u.job, f"failed on its worker: {_one_line(e.cause or e)}")
                    except ray.exceptions.RayError as e:  # its worker or node died, `retries` times
                        yield Lost(u.job, f"lost on the Ray cluster, tried {_times(self.retries + 1)}: {_one_line(e)}")
        finally:
            for ref in pending:  # interrupted: nothing more is started; finished units are written
                ray.cancel(ref, force=True)


CLUSTERS = ("slurm", "local", "debug")


@dataclass
class SlurmExecutor:
    """Units in SLURM jobs through submitit: `units_per_job` units of one task per job (a job loads
    its task once), the jobs of a sweep one array. `cluster` "local" or "debug" runs submitit's
    executors on this machine (subprocesses; in this process), for trying a sweep without SLURM.
    `folder`: submitit's job files (logs, pickles), on a file system the nodes share."""

    folder: str
    cluster: str = "slurm"
    partition: str | None = None
    time_min: int = 60
    cpus: int = 1
    gpus: int = 0
    units_per_job: int = 16
    parallelism: int | None = None  # array jobs running at once (None: SLURM's default)
    retries: int = 2  # resubmissions of a job that failed or was lost
    poll_seconds: float = 2.0
    name: str = "slurm"

    def start(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ExecutorError(f"unknown --slurm-cluster {self.cluster!r}; choose one of {', '.join(CLUSTERS)}")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ExecutorError("--executor slurm found no `sbatch` here: run on a SLURM login node, or try the sweep "
                                "on this machine with --slurm-cluster local")
        submitit = _import("submitit", "slurm")  # (it points logging at the sys.stderr of its import)
        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params = {"timeout_min": self.time_min, "cpus_per_task": self.cpus, "name": "circuit-bench"}
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.parallelism:
            params["slurm_array_parallelism"] = self.parallelism
        ex.update_parameters(**params)
        self._ex = ex

    def stop(self) -> None:
        pass

    def batches(self, units: list) -> list:
        """Units grouped into jobs: consecutive units of one task, `units_per_job` at most; each
        job's first unit sends the task's facts back."""
        out: list = []
        for u in units:
            if out and len(out[-1]) < self.units_per_job and out[-1][0].job[0] == u.job[0]:
                out[-1].append(u)
            else:
                out.append([dataclasses.replace(u, facts=True)])
        return out

    def results(self, cfg: RunConfig, setup: Setup, units: list) -> Iterator:
        ex = self._ex
        batches = self.batches(units)
        with ex.batch():  # one array job on SLURM
            jobs = [ex.submit(run_units, cfg, setup, b) for b in batches]
        active = {id(j): (j, b, 0) for j, b in zip(jobs, batches)}
        try:
            while active:
                finished = [(k, v) for k, v in active.items() if v[0].done()]
                if not finished:
                    time.sleep(self.poll_seconds)
                    continue
                for k, (job, batch, tries) in finished:
                    del active[k]
                    try:
                        yield from job.result()
                        continue
                    except Exception as e:  # noqa: BLE001  the job failed, timed out or was lost
                        why = _job_failure(e)
                    if tries < self.retries:
                        again = ex.submit(run_units, cfg, setup, batch)
                        active[id(again)] = (again, batch, tries + 1)
                    else:
                        for u in batch:
                            yield Lost(u.job, f"its SLURM job failed {_times(tries + 1)} (logs in {self.folder}): {why}")
        finally:
            for job, _, _ in active.values():
                try:
                    job.cancel(check=False)
                except Exception:  # noqa: BLE001  already finished or gone
                    pass
