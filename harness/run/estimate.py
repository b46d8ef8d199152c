"""Before a costly task runs: how long its jobs should take here, and how to make them cheaper.

Each method the task's jobs name is timed once here, on a few examples (its first variant and
reference among the jobs; a method that loops over patched forwards: one such forward, scaled
by their count at the task's batch from its `Timing.patched_forwards`), once in the run's
precision and once in the other (every ranking runs again there to measure its tie floor,
`harness.eval.round_off`), as are the reference forwards of the objective's scale and
faithfulness; a job's estimate scales those per-example costs to the task's examples and adds
what the runner does around the method (the bootstrap's per-example run where the batch is not
chunked; the reset control's `--reset-seeds` runs; building random-init models). Small batches
use a CPU less well, so the estimate errs long. The runner prints it only for tasks expected to
take more than SLOW_SECONDS; tracr tasks take seconds and are not timed.
"""
from __future__ import annotations

import time
import types
from dataclasses import dataclass, field

import torch

from harness.core.engine import Engine
from harness.eval import round_off
from harness.eval.faithfulness import faithfulness
from harness.methods import all_methods

SLOW_SECONDS = 300  # a task expected to take longer is announced with its estimate
CALIBRATION_EXAMPLES = 4
INIT_SECONDS = 12.0  # building one random-init GPT-2 small (transformers' init, bridge, processing), measured here


@dataclass
class Estimate:
    """Seconds per method (None: it could not be timed), and faithfulness's share."""

    task: str
    n_jobs: int
    seconds: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)  # method -> why it could not be timed
    faithfulness_seconds: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def line(self) -> str:
        parts = ", ".join(f"{m} {_duration(s)}" for m, s in sorted(self.seconds.items(), key=lambda kv: -kv[1]))
        failed = "".join(f"; {m} not timed ({why})" for m, why in self.failed.items())
        faith = (f"; faithfulness is {_duration(self.faithfulness_seconds)} of it (--no-faithfulness)"
                 if self.faithfulness_seconds >= 0.1 * self.total else "")
        return (f"{self.task}: {self.n_jobs} run{'' if self.n_jobs == 1 else 's'} expected to take about {_duration(self.total)} here ({parts}; timed "
                f"on {CALIBRATION_EXAMPLES} examples, so likely long){failed}{faith}. Cheaper: fewer --methods or "
                f"--variants, one --ablation, fewer --reset-seeds, or --device cuda")


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# what a method's `timings` read of the bench settings (harness.bench.suite.BenchConfig's defaults)
_BENCH = types.SimpleNamespace(ig_steps=5, acdc_threshold=1e-3, single_edges=100)


def _looping(spec, variant: str):
    """The method's Timing for `variant` when it loops over patched forwards (their count known)."""
    for t in (spec.timings(_BENCH) if spec.timings else []):
        if t.variant == variant and t.patched_forwards is not None:
            return t
    return None


def _per_patched_forward(engine, data, sparse: bool) -> float:
    """Seconds of one patched forward as patching and ACDC run them: `chunk_for(batch)` patches,
    whose rows (patches x examples) fill one forward. `sparse`: one edge per patch, into the first
    layer (the most a one-edge patch costs, since a forward starts at the first layer it touches);
    else every edge patched (ACDC's later steps patch most edges)."""
    from harness.core.evaluator import PatchedObjective
    from harness.methods.patching import chunk_for

    objective = PatchedObjective(engine, data, "metric")
    k, E = chunk_for(data.n), engine.graph.n_edges
    if sparse:
        patches = torch.eye(k, E, dtype=engine.w.dtype)
    else:
        patches = torch.ones(k, E, dtype=engine.w.dtype)
    return _timed(lambda: objective(patches))


def estimate(loaded, jobs: list, cfg) -> Estimate:
    """The estimate for `jobs` ((task, method, variant, reference, control) tuples of one loaded
    task, `harness.run.runner.LoadedTask`) under RunConfig `cfg`."""
    methods = all_methods()
    engine, data = loaded.engine, loaded.data
    k = min(CALIBRATION_EXAMPLES, data.n)
    small = data.subset(torch.arange(k))
    est = Estimate(loaded.task.name, len(jobs))
    per_example: dict = {}
    other_precision: dict = {}  # method -> seconds per example of its round-off run
    other_engine = None
    ref_cost = None
    for _, m, v, a, _ in jobs:
        spec = methods[m]
        if m in per_example or m in est.failed or spec.model_free:
            continue
        part = small.with_ablation(a)
        try:
            if spec.output == "ranking" and spec.objective is not None and other_engine is None:
                other_engine = Engine(engine.w.to(dtype=round_off.other_precision(engine.w.dtype)))
            loop = _looping(spec, v)
            for eng, into in ((engine, per_example), (other_engine, other_precision)):
                if into is other_precision and (spec.output != "ranking" or spec.objective is None):
                    continue
                if loop is not None:  # patching and ACDC: one patched forward, times their count at n
                    per_forward = _per_patched_forward(eng, part, sparse=spec.output != "family")
                    sweep = len(getattr(data.metric, "acdc_thresholds", None) or [1]) if spec.output == "family" else 1
                    into[m] = per_forward * loop.patched_forwards(engine.graph, data.n) * sweep / data.n
                else:
                    into[m] = _timed(lambda: spec.run(eng, part, v, seed=cfg.seed)) / k
            if ref_cost is None and spec.output == "ranking":
                ref_cost = _timed(lambda: spec.objective_scale(engine, part, v)) / k
        except Exception as e:  # noqa: BLE001  a method that cannot run here fails in its run too
            est.failed[m] = f"{type(e).__name__}"
    ref_cost = ref_cost or 0.0
    faith = 0.0
    if cfg.faithfulness and any(methods[m].output == "ranking" and c == "trained" for _, m, _, _, c in jobs):
        scores = torch.rand(engine.graph.n_edges, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        faith = _timed(lambda: faithfulness(engine, small.with_ablation(jobs[0][3]), scores)) / k
    for _, m, v, a, control in jobs:
        spec = methods[m]
        if m not in per_example:
            continue
        run = per_example[m] * data.n
        again = other_precision.get(m, 0.0) * data.n
        if control == "reset":
            s = cfg.reset_seeds * (run + again + ref_cost * data.n)
            if loaded.reset_kind == "init":
                s += (cfg.reset_seeds - 1) * INIT_SECONDS
        elif spec.output == "ranking":
            twice = bool(cfg.bootstrap) and spec.supports_per_example(v) and not spec.splits(v, data.n, loaded.chunk)
            s = run * (2 if twice else 1) + again + ref_cost * data.n
            if cfg.faithfulness:
                s += faith * data.n
                est.faithfulness_seconds += faith * data.n
        else:
            s = run
        est.seconds[m] = est.seconds.get(m, 0.0) + s
    return est
