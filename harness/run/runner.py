"""The main job: every (task, method, variant) run, scored and recorded as soon as it finishes.

A finished record is never recomputed unless `fresh`; a method that fails is recorded with its
error and the run goes on; Ctrl-C keeps every finished record.
"""
from __future__ import annotations

import inspect
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.core.engine import Engine
from harness.eval.faithfulness import faithfulness
from harness.methods import CircuitFamily, all_methods
from harness.run.store import ResultStore
from harness.eval.scoring import score_edges_and_nodes
from harness.core.loading import MissingWeightsError  # noqa: F401  (raised by tasks; re-exported for callers)
from harness.tasks import TASKS, get_task


@dataclass
class RunConfig:
    tasks: list
    methods: list
    variants: list = field(default_factory=list)  # empty: each method's default variants
    out: str = "out"
    seed: int = 0
    device: str = "cpu"
    split: str = "validation"
    ablation: str = "resample"
    fresh: bool = False
    weights_dir: str | None = None
    progress: bool = True
    bootstrap: int = 20  # resamples of the examples for AUC intervals (0: none)
    bootstrap_reruns: int = 5  # at most this many for methods that must re-run on each resample (ACDC)
    methods_explicit: bool = True  # False: defaults, so costly methods skip large graphs
    faithfulness: bool = True  # CPR/CMD of the top-k circuits of every ranking
    threads: int | None = None  # CPU threads; None: 1 for small models, torch's default otherwise


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    return name


def _graph_size(task_name: str):
    from harness.core.architectures import ARCHITECTURES
    from harness.core.graph import Graph

    arch = ARCHITECTURES.get(getattr(TASKS[task_name], "model", ""))
    return Graph(arch).n_edges if arch is not None else None


def jobs_for(cfg: RunConfig, log=print) -> list:
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
            jobs += [(t, m, v) for v in variants]
    return jobs


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _score_all(task, graph, result) -> dict:
    """(ground truth, level) -> RocResult for a ranking tensor or a bool family tensor."""
    out = {}
    for gt_name, gt in task.ground_truths().items():
        for level, r in score_edges_and_nodes(graph, result, gt.edge_mask(graph)).items():
            out[(gt_name, level)] = r
    return out


def _as_scores(result):
    if isinstance(result, CircuitFamily):
        return result.circuits.cpu()
    scores = result.detach().double().cpu()
    if not torch.isfinite(scores).all():
        raise FloatingPointError("method produced non-finite scores")
    return scores


def bootstrap_intervals(spec, engine, data, variant, task, n_boot: int, seed: int, kwargs=None, max_reruns=None) -> dict:
    """95% percentile intervals of every AUC over `n_boot` resamples of the examples.

    Methods whose scores are sums over examples (every gradient method: the model treats
    examples independently) are run once with `per_example=True` and resampled by reweighting
    rows; other methods are re-run on each resampled dataset.
    """
    kwargs = dict(kwargs or {})
    g = torch.Generator().manual_seed(10_000 + seed)
    per_ex = None
    if "per_example" in inspect.signature(spec.fn).parameters:
        try:
            per_ex = spec.run(engine, data, variant, per_example=True, **kwargs).detach().double().cpu()
        except (ValueError, NotImplementedError):
            per_ex = None  # this variant is not a sum over examples: re-run it on each resample
    if per_ex is None and max_reruns is not None:
        n_boot = min(n_boot, max_reruns)
    samples: dict = {}
    for _ in range(n_boot):
        idx = torch.randint(0, data.n, (data.n,), generator=g)
        if per_ex is not None:
            res = per_ex[idx].sum(0)
        else:
            res = _as_scores(spec.run(engine, data.subset(idx), variant, **kwargs))
        try:
            scored = _score_all(task, engine.graph, res)
        except ValueError:
            continue
        for key, r in scored.items():
            samples.setdefault(key, []).append((r.auc, r.pessimistic_auc))
    out = {}
    for key, vals in samples.items():
        a = np.array(vals)
        out[key] = {"auc_lo": float(np.percentile(a[:, 0], 2.5)), "auc_hi": float(np.percentile(a[:, 0], 97.5)),
                    "pessimistic_auc_lo": float(np.percentile(a[:, 1], 2.5)),
                    "pessimistic_auc_hi": float(np.percentile(a[:, 1], 97.5)), "n_bootstrap": len(vals)}
    return out


def run_one(task, engine, data, method: str, variant: str, cfg: RunConfig) -> dict:
    spec = all_methods()[method]
    record = {"task": task.name, "method": method, "variant": variant, "seed": cfg.seed, "device": cfg.device,
              "ablation": data.ablation, "split": cfg.split, "output": spec.output, "n_examples": data.n}
    torch.manual_seed(cfg.seed)
    _sync(cfg.device)
    t0 = time.perf_counter()
    kwargs = {"seed": cfg.seed} if "seed" in inspect.signature(spec.fn).parameters else {}  # seeded methods
    result = spec.run(engine, data, variant, **kwargs)
    _sync(cfg.device)
    record["seconds"] = time.perf_counter() - t0
    scores = _as_scores(result)
    if isinstance(result, CircuitFamily):
        record["thresholds"] = [float(x) for x in result.thresholds]
        record["circuit_sizes"] = scores.sum(1).tolist()
    else:
        record["scores"] = scores.tolist()
        if cfg.faithfulness:
            record["faithfulness"] = faithfulness(engine, data, scores)
    scored = _score_all(task, engine.graph, scores)
    intervals = bootstrap_intervals(spec, engine, data, variant, task, cfg.bootstrap, cfg.seed, kwargs, cfg.bootstrap_reruns) if cfg.bootstrap and scored else {}
    rows = []
    for (gt_name, level), r in scored.items():
        keep = np.linspace(0, len(r.fpr) - 1, min(len(r.fpr), 400)).round().astype(int)
        rows.append({"ground_truth": gt_name, "level": level, "auc": r.auc, "pessimistic_auc": r.pessimistic_auc,
                     "n_edges": r.n_items, "n_positive": r.n_positive, **intervals.get((gt_name, level), {}),
                     "roc": {"fpr": r.fpr[keep].tolist(), "tpr": r.tpr[keep].tolist()}})
    record["rows"] = rows
    record["status"] = "ok"
    record["error"] = None
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
        "seed": cfg.seed, "device": cfg.device, "split": cfg.split, "ablation": cfg.ablation,
        "bootstrap_resamples": cfg.bootstrap, "git_commit": commit, "python": platform.python_version(),
        "versions": {p: ver(p) for p in ("circuit-bench", "torch", "transformer-lens", "tracr-pypi", "jax", "scikit-learn", "pandas")},
        "tasks": {},
    }


def run(cfg: RunConfig, log=print) -> ResultStore:
    cfg.device = resolve_device(cfg.device)
    store = ResultStore(cfg.out)
    if cfg.fresh:
        store.clear()
    meta = run_metadata(cfg)
    meta_path = Path(cfg.out) / "meta.json"
    jobs = jobs_for(cfg, log)
    todo = []
    for j in jobs:
        rec = store.get(*j)
        if rec and rec.get("status") == "ok" and rec.get("seed") == cfg.seed and rec.get("ablation") == cfg.ablation \
                and rec.get("split") == cfg.split:
            continue
        todo.append(j)
    if len(todo) < len(jobs):
        log(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} results already in {store.records_dir} (use --fresh to redo)")
    loaded = {}
    bar = tqdm(todo, disable=not cfg.progress, unit="run", dynamic_ncols=True)
    try:
        for t, m, v in bar:
            bar.set_description(f"{t} | {m} | {v}")
            if t not in loaded:
                task = get_task(t)
                try:
                    weights = task.load_model(cfg.device, torch.float32, cfg.weights_dir)
                    engine = Engine(weights)
                    _set_threads(cfg, weights.cfg)
                    data = task.data(cfg.split, cfg.seed, cfg.ablation)
                    loaded[t] = (task, engine, data, None)
                    meta["tasks"][t] = (f"model {weights.cfg.name} ({weights.provenance.get('source', '?')}); "
                                        f"{data.n} {cfg.split} examples of {data.clean.shape[1]} tokens; "
                                        f"metric {data.metric_name}" + (f"; analogue of {task.mirrors}" if task.mirrors else ""))
                    Path(cfg.out).mkdir(parents=True, exist_ok=True)
                    meta_path.write_text(json.dumps(meta, indent=1))
                except MissingWeightsError as e:
                    loaded[t] = (task, None, None, str(e))
                    log(f"skipping task {t}: {e}")
            task, engine, data, skip = loaded[t]
            if skip:
                store.write({"task": t, "method": m, "variant": v, "seed": cfg.seed, "device": cfg.device,
                             "ablation": cfg.ablation, "split": cfg.split, "status": "skipped", "error": skip, "rows": []})
                continue
            try:
                rec = run_one(task, engine, data, m, v, cfg)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a failing method is recorded; the others go on
                rec = {"task": t, "method": m, "variant": v, "seed": cfg.seed, "device": cfg.device,
                       "ablation": cfg.ablation, "split": cfg.split, "status": "error",
                       "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "rows": []}
                log(f"{t} {m}/{v} failed: {rec['error']}")
            store.write(rec)
    finally:
        store.write_csv()
        if not meta["tasks"] and not meta_path.exists():
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            meta_path.write_text(json.dumps(meta, indent=1))
    return store


def offline_tasks() -> list:
    return [name for name, cls in TASKS.items() if getattr(cls, "offline", True)]
