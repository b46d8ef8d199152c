"""The main job: every (task, method, variant, reference) run, scored and recorded as soon as it finishes.

The reference (`ablation`: the source patched from) is an axis of every result: by default each
variant runs under every reference it accepts (resample and zero ablation), so each gradient site
stands beside baselines that patch from the same source.

A finished record is reused only when its fingerprint (every option and input that determines
it, `harness.run.fingerprint`) matches, and recomputed otherwise, saying why once; a method that
fails is recorded with its error and the run goes on; Ctrl-C keeps every finished record.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.core.device import resolve_device
from harness.core.engine import Engine
from harness.core.loading import MissingWeightsError
from harness.eval.bootstrap import bootstrap_intervals, ground_truth_masks, score_all
from harness.eval.faithfulness import faithfulness
from harness.eval.round_off import measured_floor
from harness.methods import all_methods
from harness.methods.memory import ACTIVATION_BUDGET, examples_per_pass
from harness.methods.registry import as_scores
from harness.run.fingerprint import differences, file_digests, fingerprint, task_inputs
from harness.run.store import ResultStore
from harness.tasks import TASKS, get_task

_debug = logging.getLogger(__name__).debug  # a line per finished run (`circuit-bench -v`)


@dataclass
class RunConfig:
    tasks: list
    methods: list
    variants: list = field(default_factory=list)  # empty: each method's default variants
    out: str = "out"
    seed: int = 0
    device: str = "cpu"
    split: str = "validation"
    ablations: tuple = ("resample", "zero")  # references to run; each variant under those it accepts
    position_scramble: bool = True  # ACDC's tracr protocol under resample (tasks that define one)
    dtype: str | None = None  # "float32" / "float64"; None: each task's default_dtype (tracr: float64)
    metric: str | None = None  # a task metric by name (e.g. "kl"); None: each task's ACDC loss metric
    fresh: bool = False
    weights_dir: str | None = None
    progress: bool = True
    bootstrap: int = 1000  # resamples of the examples for AUC intervals (< 1000: none, see eval.bootstrap)
    bootstrap_reruns: int = 0  # re-runs allowed for methods that must re-run per resample (ACDC; < 1000: no interval)
    methods_explicit: bool = True  # False: defaults, so costly methods skip large graphs
    faithfulness: bool = True  # CPR/CMD of the top-k circuits of every ranking
    threads: int | None = None  # CPU threads; None: 1 for small models, torch's default otherwise
    # "trained" and/or "reset" (the method on reset networks, harness.core.reset); None: trained,
    # plus reset on tasks that reset by default (tracr), for every method that runs the model
    # but ACDC (its sweep on reset_seeds models is minutes: ask for it by naming --controls)
    controls: tuple | None = None
    reset_seeds: int = 5  # reset models per reset control: the interval is their spread
    chunk: int | None = None  # examples per pass of chunkable variants; None: as many as fit ACTIVATION_BUDGET
    per_position: bool = False  # also keep each token position's share of the scores (variants that split so)


def _graph_size(task_name: str):
    from harness.core.architectures import ARCHITECTURES
    from harness.core.graph import Graph

    arch = ARCHITECTURES.get(getattr(TASKS[task_name], "model", ""))
    return Graph(arch).n_edges if arch is not None else None


CONTROLS = ("trained", "reset")


def _controls(cfg: RunConfig, task_name: str, spec) -> list:
    wanted = list(cfg.controls) if cfg.controls is not None else \
        ["trained"] + (["reset"] if getattr(TASKS[task_name], "reset_by_default", False) and spec.output != "family" else [])
    return [c for c in wanted if not (c == "reset" and spec.model_free)]


def jobs_for(cfg: RunConfig, log=print) -> list:
    """(task, method, variant, reference, control) of every run `cfg` asks for."""
    methods = all_methods()
    jobs = []
    for t in cfg.tasks:
        for m in cfg.methods:
            spec = methods[m]
            if not cfg.methods_explicit and spec.default_max_edges:
                n = _graph_size(t)
                if n is not None and n > spec.default_max_edges:
                    log(f"not running {m} on {t} by default ({n} edges: too costly); ask for it with --methods {m}")
                    continue
            variants = [v for v in cfg.variants if v in spec.variants] if cfg.variants else list(spec.default_variants)
            jobs += [(t, m, v, a, c) for c in _controls(cfg, t, spec) for v in variants for a in cfg.ablations
                     if a in spec.references_for(v)]
    return jobs


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def task_dtype(cfg: RunConfig, task) -> torch.dtype:
    """The dtype a run of `cfg` loads `task` in: `cfg.dtype`, else the task's default."""
    if cfg.dtype is None:
        return task.default_dtype
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[cfg.dtype]


def check_metric(task, metric: str | None) -> None:
    """A one-line error naming the task's metrics when `metric` is not one of them."""
    names = list(task.metrics)
    if metric is not None and metric not in names:
        raise ValueError(f"task {task.name} has no metric {metric!r}; its metrics: {', '.join(names)}")


def task_data(task, cfg: RunConfig):
    """The split's data, with `cfg.metric` where it is not the task's default (the first)."""
    check_metric(task, cfg.metric)
    other = cfg.metric is not None and cfg.metric != next(iter(task.metrics))
    return task.data(cfg.split, cfg.seed, **({"metric": cfg.metric} if other else {}))


CHANCE_SEEDS = 20
RESET_CACHE_BYTES = 2**28  # a task's reset networks are kept for all its methods when they fit this


def chance_spread(spec, engine, data, variant, task, seed: int) -> dict:
    """A chance baseline over CHANCE_SEEDS seeds (seed, seed+1, ...): (ground truth, level) -> the
    2.5/97.5 percentiles of its AUCs over seeds as the interval, and their means, so one draw is
    never read as "chance"."""
    draws: dict = {}
    for s in range(seed, seed + CHANCE_SEEDS):
        for key, r in score_all(task, engine.graph, as_scores(spec.run(engine, data, variant, seed=s))).items():
            draws.setdefault(key, []).append((r.auc, r.pessimistic_auc))
    return _spread(draws)


def reset_spread(spec, data, variant, task, cfg: RunConfig, reset_model, chunk=None) -> dict:
    """The method on `cfg.reset_seeds` reset networks (`reset_model(seed)`, seeds seed, seed+1, ...),
    each scored as a trained run is (its own measured tie floor; no bootstrap or faithfulness):
    (ground truth, level) -> n_edges, n_positive, and their mean AUCs and
    2.5/97.5 percentiles (or the note saying why they are n/a)."""
    draws: dict = {}
    sizes: dict = {}
    for s in range(cfg.seed, cfg.seed + cfg.reset_seeds):
        eng = Engine(reset_model(s))
        torch.manual_seed(cfg.seed)
        scores = as_scores(spec.run(eng, data, variant, seed=cfg.seed, chunk=chunk))
        measured = measured_floor(spec, eng, data, variant, cfg.seed, scores, chunk)
        for key, r in score_all(task, eng.graph, measured.ranked(scores), measured.floor).items():
            draws.setdefault(key, []).append((r.auc, r.pessimistic_auc))
            sizes[key] = (r.n_items, r.n_positive, r.note)
        del eng
    spread = _spread(draws)  # keys whose AUCs are all n/a are left out; they keep the reason
    return {k: {"n_edges": n, "n_positive": p, **spread.get(k, {"note": note})} for k, (n, p, note) in sizes.items()}


RESET_WORDS = {"acdc": "ACDC reset networks (trained weights permuted)", "random": "random models of the same shape",
               "init": "randomly initialised models (trained weights absent)"}


def record_head(task: str, method: str, variant: str, ablation: str, control: str, cfg: RunConfig) -> dict:
    """The keys every record starts with: what it is a result of."""
    return {"task": task, "method": method, "variant": variant, "seed": cfg.seed, "device": cfg.device,
            "ablation": ablation, "split": cfg.split, "control": control}


def _run_facts(spec, engine, data) -> dict:
    return {"position_scramble": data.ablation == "resample" and data.position_scramble is not None,
            "dtype": str(engine.w.dtype).replace("torch.", ""), "output": spec.output, "n_examples": data.n,
            "metric": data.metric_name}


def run_reset(task, engine, data, method: str, variant: str, cfg: RunConfig, reset_kind: str, reset_model,
              chunk=None) -> dict:
    """The reset-network control of one run: a record whose rows hold the mean AUC over
    `cfg.reset_seeds` reset networks (`reset_model(seed)`, of kind `reset_kind`), the interval
    their spread."""
    spec = all_methods()[method]
    record = {**record_head(task.name, method, variant, data.ablation, "reset", cfg), "reset_kind": reset_kind,
              "reset_seeds": cfg.reset_seeds, **_run_facts(spec, engine, data)}
    _sync(cfg.device)
    t0 = time.perf_counter()
    spread = reset_spread(spec, data, variant, task, cfg, reset_model, chunk)
    _sync(cfg.device)
    record["seconds"] = time.perf_counter() - t0
    rows = []
    for (gt_name, level), iv in spread.items():
        ok = "mean_auc" in iv
        rows.append({"ground_truth": gt_name, "level": level, "auc": iv.get("mean_auc", float("nan")),
                     "pessimistic_auc": iv.get("mean_pessimistic_auc", float("nan")),
                     "note": (f"reset control: mean of {iv['n_seeds']} {RESET_WORDS[reset_kind]}; "
                              "interval: their 2.5-97.5 percentiles") if ok else iv.get("note"),
                     **{k: v for k, v in iv.items() if not k.startswith("mean_") and k != "note"}})
    record.update(rows=rows, status="ok", error=None)
    return record


def _spread(draws: dict) -> dict:
    out = {}
    for key, vals in draws.items():
        a = np.array(vals)
        if np.isnan(a).all():
            continue
        out[key] = {"auc_lo": float(np.nanpercentile(a[:, 0], 2.5)), "auc_hi": float(np.nanpercentile(a[:, 0], 97.5)),
                    "pessimistic_auc_lo": float(np.nanpercentile(a[:, 1], 2.5)),
                    "pessimistic_auc_hi": float(np.nanpercentile(a[:, 1], 97.5)), "n_seeds": len(a),
                    "mean_auc": float(np.nanmean(a[:, 0])), "mean_pessimistic_auc": float(np.nanmean(a[:, 1]))}
    return out


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Scored:
    """One variant's result as a run keeps it: `scores` float64 [n_edges] as they are ranked (the
    float64 run's, `harness.eval.round_off`) or bool [k, n_edges] for a family; `floor` the tie
    floor; `per_example` [batch, n_edges] when it ran in chunks; `per_pass` the examples per pass."""

    result: object
    scores: torch.Tensor
    floor: float
    record: dict  # seconds, examples_per_pass, the floor's fields
    per_example: object = None
    per_pass: object = None


def compute(spec, engine, data, variant: str, seed: int, chunk=None, device: str = "cpu") -> Scored:
    """Run `variant` as the main job does (seeded, chunked, timed) and measure its tie floor:
    what both `run_one` and the Python API (`harness.api`) rank and score."""
    chunked = spec.splits(variant, data.n, chunk)
    per_pass = spec.passes_of(variant, data.n, chunk)
    torch.manual_seed(seed)
    _sync(device)
    t0 = time.perf_counter()
    per_ex = None
    if chunked:
        per_ex = spec.run(engine, data, variant, seed=seed, per_example=True, chunk=chunk).detach().double().cpu()
        result = per_ex.sum(0)
    else:
        result = spec.run(engine, data, variant, seed=seed, chunk=per_pass)
    _sync(device)
    record = {"seconds": time.perf_counter() - t0, **({"examples_per_pass": per_pass} if per_pass else {})}
    scores = as_scores(result)
    floor = 0.0
    if spec.output == "ranking":
        measured = measured_floor(spec, engine, data, variant, seed, scores, per_pass)
        floor = measured.floor
        record.update(measured.as_record())
        scores = measured.ranked(scores)  # float64's (harness.eval.round_off)
    return Scored(result, scores, floor, record, per_ex, per_pass)


def run_one(task, engine, data, method: str, variant: str, cfg: RunConfig, chunk=None) -> dict:
    """One trained run. `chunk`: examples per pass; below the batch, a variant with per-example
    scores runs once, per example, in chunks, and its scores are their sum; one that chunks itself
    (`MethodSpec.chunks_itself`) gets `chunk`."""
    spec = all_methods()[method]
    record = {**record_head(task.name, method, variant, data.ablation, "trained", cfg), **_run_facts(spec, engine, data)}
    done = compute(spec, engine, data, variant, cfg.seed, chunk, cfg.device)
    record.update(done.record)
    scores, floor, per_ex, per_pass, result = done.scores, done.floor, done.per_example, done.per_pass, done.result
    if spec.output == "family":
        record["thresholds"] = [float(x) for x in result.thresholds]
        record["circuit_sizes"] = scores.sum(1).tolist()
    else:
        record["scores"] = scores.tolist()
        if cfg.per_position and spec.supports_per_position(variant):
            record.update(position_record(spec, engine, data, variant, cfg.seed, chunk, result))
        if cfg.faithfulness:
            record["faithfulness"] = faithfulness(engine, data, scores, examples_per_pass=per_pass)
    scored = score_all(task, engine.graph, scores, floor)
    intervals = {}
    if spec.chance:
        intervals = chance_spread(spec, engine, data, variant, task, cfg.seed)
    elif cfg.bootstrap and any(np.isfinite(r.auc) for r in scored.values()):
        intervals = bootstrap_intervals(spec, engine, data, variant, task, cfg.bootstrap, cfg.seed, cfg.bootstrap_reruns,
                                        floor, per_ex)
    record.update(rows=_rows(scored, intervals), status="ok", error=None)
    return record


def position_record(spec, engine, data, variant: str, seed: int, chunk, result) -> dict:
    """The record's per-position fields: `position_scores` [pos][n_edges], each token position's
    terms (a second run of the variant, `MethodSpec.run(per_position=True)`), and
    `position_sum_max_diff`, the largest |sum over positions - the run's scores| (round-off: the
    sums are the scores; docs/methods.md#per-position-edge-scores)."""
    torch.manual_seed(seed)
    terms = spec.run(engine, data, variant, seed=seed, per_position=True, chunk=chunk).detach().double().cpu()
    diff = float((terms.sum(0) - result.detach().double().cpu()).abs().max())
    return {"position_scores": terms.tolist(), "position_sum_max_diff": diff}


def _rows(scored: dict, intervals: dict) -> list:
    """A record's rows: one per (ground truth, level), with its interval and a thinned ROC."""
    rows = []
    for (gt_name, level), r in scored.items():
        keep = np.linspace(0, len(r.fpr) - 1, min(len(r.fpr), 400)).round().astype(int)
        iv = intervals.get((gt_name, level), {})
        auc, pess, note = r.auc, r.pessimistic_auc, r.note
        if "mean_auc" in iv:  # a chance baseline: the mean over seeds, the interval their spread
            auc, pess = iv["mean_auc"], iv["mean_pessimistic_auc"]
            note = note or f"mean of {iv['n_seeds']} seeds; interval: their 2.5-97.5 percentiles"
        rows.append({"ground_truth": gt_name, "level": level, "auc": auc, "pessimistic_auc": pess, "note": note,
                     "n_edges": r.n_items, "n_positive": r.n_positive,
                     **{k: v for k, v in iv.items() if not k.startswith("mean_")},
                     "roc": {"fpr": r.fpr[keep].tolist(), "tpr": r.tpr[keep].tolist()}})
    return rows


def run_graph_only(task, graph, method: str, variant: str, ablation: str, cfg: RunConfig) -> dict:
    """A model-free method (structure-only, random) on a task whose weights are absent: the
    architecture's graph and the ground truth are all it needs, so its AUCs are known offline
    (no faithfulness, which needs the model)."""
    spec = all_methods()[method]
    engine, data = types.SimpleNamespace(graph=graph), types.SimpleNamespace(ablation=ablation)
    record = {**record_head(task.name, method, variant, ablation, "trained", cfg), "output": spec.output,
              "note": "weights absent: run on the architecture's graph alone"}
    t0 = time.perf_counter()
    scores = as_scores(spec.run(engine, data, variant, seed=cfg.seed))
    record["seconds"] = time.perf_counter() - t0
    record["scores"] = scores.tolist()
    intervals = chance_spread(spec, engine, data, variant, task, cfg.seed) if spec.chance else {}
    record.update(rows=_rows(score_all(task, graph, scores), intervals), status="ok", error=None)
    return record


_DEFAULT_THREADS = torch.get_num_threads()
SMALL_D_MODEL = 256


def _set_threads(cfg: RunConfig, model_cfg) -> None:
    """On CPU, tiny models (tracr) run many small ops, where starting threads costs more than it
    saves (measured: ACDC on tracr-induction 2.3 s on one thread, 85 s on two busy cores)."""
    if not cfg.device.startswith("cpu"):
        return
    n = cfg.threads or (1 if model_cfg.d_model <= SMALL_D_MODEL else _DEFAULT_THREADS)
    torch.set_num_threads(n)


def run_metadata(cfg: RunConfig) -> dict:
    """Versions, device, seed and commit: what a reader needs to trust or reproduce a number."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    def ver(p):
        try:
            return version(p)
        except PackageNotFoundError:
            return "absent"

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:
        commit = "unknown"
    return {
        "seed": cfg.seed, "device": cfg.device, "split": cfg.split, "references": list(cfg.ablations),
        "position_scramble": cfg.position_scramble,
        "bootstrap_resamples": cfg.bootstrap, "reset_seeds": cfg.reset_seeds, "git_commit": commit, "python": platform.python_version(),
        "versions": {p: ver(p) for p in ("circuit-bench", "torch", "transformer-lens", "tracr-pypi", "jax", "scikit-learn", "pandas")},
        "tasks": {},
        "layers": {},  # task -> its model's layers: the depth axis of the suite statistics
    }


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 400 else text[:397] + "..."


def run(cfg: RunConfig, log=print) -> ResultStore:
    """Run every job of `cfg` into `cfg.out`, holding the folder's lock (a second run on the same
    folder is refused with `store.FolderLocked`, a ValueError)."""
    cfg.device = str(resolve_device(cfg.device))
    store = ResultStore(cfg.out)
    with store.lock():
        return _run_locked(cfg, store, log)


@dataclass
class LoadedTask:
    """One task as the runner holds it: loaded, or failed with (status, one-line reason); a task
    whose weights are absent keeps its architecture's graph for model-free methods and, where its
    architecture can be initialised here, an engine on a random-init model for reset controls."""

    task: object
    engine: Engine | None = None
    data: object = None
    problems: dict = field(default_factory=dict)  # ground truth -> why it cannot be used
    inputs: dict = field(default_factory=dict)  # input digests (harness.run.fingerprint)
    failure: tuple | None = None  # (status, reason) of trained runs that cannot run
    graph: object = None
    reset_kind: str | None = None  # the reset controls' kind (harness.core.reset KINDS, or "init")
    reset_model: Callable | None = None  # seed -> Weights of one reset network
    chunk: int | None = None  # examples per pass of chunkable variants (harness.methods.memory)

    def runs(self, spec, control: str) -> str | None:
        """How a job runs: "model" (on the engine), "graph" (a model-free method on the graph
        alone) or None (it cannot: the failure is recorded)."""
        if control == "reset":
            return "model" if self.reset_model is not None else None
        if self.failure is None:
            return "model"
        return "graph" if spec.model_free and self.graph is not None else None


def _loaded(task, weights, cfg: RunConfig, meta: dict, log, failure=None, reset_kind=None, reset_model=None):
    """A LoadedTask on `weights` (trained, or the first random-init model), with its data."""
    engine = Engine(weights)
    _set_threads(cfg, weights.cfg)
    data = task_data(task, cfg)
    if not cfg.position_scramble:
        data = dataclasses.replace(data, position_scramble=None)
    problems = ground_truth_masks(task, engine.graph)[1]
    for name, why in problems.items():
        log(f"task {task.name}: ground truth {name!r} cannot be used, its rows are left out: {_one_line(why)}")
    source = "random init: trained weights absent" if reset_kind == "init" else weights.provenance.get("source", "?")
    meta.setdefault("layers", {})[task.name] = weights.cfg.n_layers
    meta["tasks"][task.name] = (f"model {weights.cfg.name} ({source}); "
                                f"{data.n} {cfg.split} examples of {data.clean.shape[1]} tokens; metric {data.metric_name}"
                                + (f"; analogue of {task.mirrors}" if task.mirrors else ""))
    if reset_model is None:
        from harness.core.reset import reset_weights

        reset_kind = getattr(task, "reset_kind", None)
        reset_model = (lambda s: reset_weights(weights, reset_kind, s)) if reset_kind else None
        n_bytes = sum(t.numel() * t.element_size() for t in weights.params.values())
        if reset_model is not None and n_bytes * cfg.reset_seeds <= RESET_CACHE_BYTES:
            # small models: each seed's reset network is built once for all the task's methods
            reset_model = functools.lru_cache(maxsize=None)(reset_model)
    chunk = cfg.chunk or examples_per_pass(weights.cfg, data.clean.shape[1], data.n, weights.dtype)
    if chunk < data.n:
        log(f"task {task.name}: gradient methods run {chunk} of {data.n} examples per pass (to stay within "
            f"{ACTIVATION_BUDGET / 2**30:.0f} GiB; --chunk N sets it)")
    return LoadedTask(task, engine, data, problems, task_inputs(task, weights, data), failure, engine.graph,
                      reset_kind, reset_model, chunk)


def _load_task(t: str, cfg: RunConfig, meta: dict, log, want_reset: bool = False) -> LoadedTask:
    """Load one task; a task that cannot be loaded fails alone. `want_reset`: reset controls are
    asked for, so a pretrained task without its weights runs them on random-init models."""
    task = get_task(t)
    dtype = task_dtype(cfg, task)
    log(f"task {t}: {task.loading_line()}")
    try:
        return _loaded(task, task.load_model(cfg.device, dtype, cfg.weights_dir), cfg, meta, log)
    except MissingWeightsError as e:
        from harness.core.architectures import ARCHITECTURES
        from harness.core.graph import Graph
        from harness.core.initialised import can_initialise, initialised_weights

        missing = str(e)
        if want_reset and can_initialise(task.model):
            try:
                first = initialised_weights(task.model, cfg.seed, cfg.device, dtype)
                model = lambda s: first if s == cfg.seed else initialised_weights(task.model, s, cfg.device, dtype)  # noqa: E731
                loaded = _loaded(task, first, cfg, meta, log, ("skipped", missing), "init", model)
                log(f"task {t}: trained weights absent, so only model-free methods and reset controls (on "
                    f"random-init {task.model} models) run: {missing}")
                return loaded
            except MissingWeightsError as e2:  # the tokenizer or data files are absent too
                missing = f"{missing}; and for reset controls on random-init models: {e2}"
            except Exception as e2:  # noqa: BLE001  the initialiser failed: the task is skipped as without it
                missing = (f"{missing}; and random-init {task.model} models for reset controls could not be built "
                           f"({type(e2).__name__}: {_one_line(e2)})")
        arch = ARCHITECTURES.get(task.model)
        log(f"skipping task {t}" + (" but for model-free methods (structure, random)" if arch else "") + f": {missing}")
        return LoadedTask(task, failure=("skipped", missing), graph=Graph(arch) if arch else None,
                          inputs={"data": "absent", "weights": "absent",
                                  "ground_truth_files": file_digests(task.ground_truth_paths())})
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a broken file or bad data: this task fails, the others run
        why = f"could not load or prepare task {t}: {type(e).__name__}: {_one_line(e)}"
        log(why)
        return LoadedTask(task, failure=("error", why))


def fingerprint_of(loaded: LoadedTask, job: tuple, cfg: RunConfig) -> dict:
    """The fingerprint a record of `job` on `loaded` is stored with (harness.run.fingerprint)."""
    return fingerprint(cfg, all_methods()[job[1]], job[2], loaded.inputs, job[4], loaded.reset_kind)


def _stored(store: ResultStore, loaded: LoadedTask, job: tuple, cfg: RunConfig) -> tuple:
    """(fingerprint, changes): the job's fingerprint, and None when no finished record is stored,
    [] when the stored one can be reused, else what changed."""
    fp = fingerprint_of(loaded, job, cfg)
    old = store.get(*job)
    if not old or old.get("status") != "ok":
        return fp, None
    return fp, differences(old.get("fingerprint"), fp)


def _reusable(store: ResultStore, loaded: LoadedTask, job: tuple, cfg: RunConfig) -> bool:
    return _stored(store, loaded, job, cfg)[1] == []


def _announce(loaded: LoadedTask, jobs: list, cfg: RunConfig, log, bar) -> None:
    """Time each method briefly and say how long the task's runs should take, when that is long."""
    from harness.run.estimate import SLOW_SECONDS, estimate

    if not jobs:
        return
    bar.set_description(f"{loaded.task.name} | estimating")
    log(f"task {loaded.task.name}: timing each method briefly to estimate its {len(jobs)} runs (a minute or two "
        "where patching runs)")
    est = estimate(loaded, jobs, cfg)
    if est.total > SLOW_SECONDS:
        log(est.line())


def describe(job: tuple) -> str:
    """A job in words, for log lines: "task method/variant, reference[, reset control]"."""
    t, m, v, ablation, control = job
    return f"{t} {m}/{v}, {ablation}" + (", reset control" if control == "reset" else "")


def perform(loaded: LoadedTask, job: tuple, cfg: RunConfig, fp: dict | None, log) -> dict:
    """The record of one job (task, method, variant, reference, control) on its loaded task: what
    every executor writes (`harness.run.units` runs this on cluster workers). A job that cannot
    run gets a record saying why; a method that fails is recorded with its error, never raised.
    `fp`: the job's fingerprint, stored with the record."""
    t, m, v, ablation, control = job
    head = record_head(t, m, v, ablation, control, cfg)
    how = loaded.runs(all_methods()[m], control)
    if how is None:
        status, why = loaded.failure or ("skipped", f"{t} has no reset control")
        return {**head, "status": status, "error": why, "rows": []}
    task, engine, data, problems = loaded.task, loaded.engine, loaded.data, loaded.problems
    why = all_methods()[m].unsupported(loaded.graph.cfg, v) if loaded.graph is not None else None
    if why:
        return {**head, "status": "skipped", "error": why, "rows": []}
    try:
        if how == "graph":
            rec = run_graph_only(task, loaded.graph, m, v, ablation, cfg)
        elif control == "reset":
            rec = run_reset(task, engine, data.with_ablation(ablation), m, v, cfg, loaded.reset_kind,
                            loaded.reset_model, loaded.chunk)
        else:
            rec = run_one(task, engine, data.with_ablation(ablation), m, v, cfg, loaded.chunk)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a failing method is recorded; the others go on
        rec = {**head, "status": "error", "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc(), "rows": []}
        log(f"{describe(job)} failed: {rec['error']}")
    rec["fingerprint"] = fp
    if problems:
        rec["ground_truth_problems"] = problems
    return rec


@dataclass
class Tally:
    """What a run reused and recomputed of the records already in its folder, said as it goes
    (each reason for recomputing once) and summed up at the end: the local runner's and a
    sweep's driver's (`harness.run.sweep`) words."""

    log: Callable
    reused: int = 0
    stale: int = 0
    told: set = field(default_factory=set)

    def recomputing(self, changed: list, job: tuple) -> None:
        self.stale += 1
        why = "; ".join(changed)
        if why not in self.told:
            self.told.add(why)
            self.log(f"recomputing stored results because {why} (first: {describe(job)})")

    def summary(self, n_jobs: int, records_dir) -> None:
        if self.reused:
            self.log(f"reused {self.reused} of {n_jobs} results already in {records_dir}"
                     + (f"; recomputed {self.stale} whose options or inputs changed" if self.stale else "")
                     + " (use --fresh to redo all)")


def _run_locked(cfg: RunConfig, store: ResultStore, log) -> ResultStore:
    if cfg.fresh:
        store.clear()
    meta = run_metadata(cfg)
    meta_path = Path(cfg.out) / "meta.json"
    jobs = jobs_for(cfg, log)
    by_task: dict = {}
    for j in jobs:
        by_task.setdefault(j[0], []).append(j)
    methods = all_methods()
    tally = Tally(log)
    bar = tqdm(total=len(jobs), disable=not cfg.progress, unit="run", dynamic_ncols=True)
    try:
        for t, task_jobs in by_task.items():
            bar.set_description(f"{t} | loading")
            loaded = _load_task(t, cfg, meta, log, want_reset=any(j[4] == "reset" for j in task_jobs))
            store.root.mkdir(parents=True, exist_ok=True)
            meta_path.write_text(json.dumps(meta, indent=1))
            if loaded.graph is not None:
                store.write_edges(t, loaded.graph, ground_truth_masks(loaded.task, loaded.graph)[0])
            if loaded.engine is not None and loaded.engine.cfg.d_model > SMALL_D_MODEL:
                _announce(loaded, [j for j in task_jobs if loaded.runs(methods[j[1]], j[4]) == "model"
                                   and not _reusable(store, loaded, j, cfg)], cfg, log, bar)
            for job in task_jobs:
                t, m, v, ablation, control = job
                fp = None
                if loaded.runs(methods[m], control) is not None:
                    fp, changed = _stored(store, loaded, job, cfg)
                    if changed is not None:
                        if not changed:
                            tally.reused += 1
                            bar.update()
                            continue
                        tally.recomputing(changed, job)
                    bar.set_description(f"{t} | {m} | {v} | {ablation}" + (" | reset" if control == "reset" else ""))
                rec = perform(loaded, job, cfg, fp, log)
                store.write(rec)
                if fp is not None:
                    _debug(f"{describe(job)}: {rec.get('status', 'ok')} in {rec.get('seconds') or 0:.2f} s")
                bar.update()
            del loaded  # one task's model in memory at a time
    finally:
        bar.close()
        store.write_csv()
        store.write_scores()
        if not meta_path.exists():
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            meta_path.write_text(json.dumps(meta, indent=1))
    tally.summary(len(jobs), store.records_dir)
    return store


def offline_tasks() -> list:
    return [name for name, cls in TASKS.items() if getattr(cls, "offline", True) and getattr(cls, "in_default_run", True)]
