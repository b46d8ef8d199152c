"""The main job: every (task, method, variant) run, scored and recorded as soon as it finishes.

A finished record is never recomputed unless `fresh`; a method that fails is recorded with its
error and the run goes on; Ctrl-C keeps every finished record.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .engine import Engine
from .methods import CircuitFamily, all_methods
from .results import ResultStore
from .scoring import score_edges_and_nodes
from .tasks import TASKS, get_task


class MissingWeightsError(RuntimeError):
    """Pretrained weights are not available here; the message names the fix."""


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


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    return name


def jobs_for(cfg: RunConfig) -> list:
    methods = all_methods()
    jobs = []
    for t in cfg.tasks:
        for m in cfg.methods:
            spec = methods[m]
            variants = [v for v in cfg.variants if v in spec.variants] if cfg.variants else list(spec.default_variants)
            jobs += [(t, m, v) for v in variants]
    return jobs


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_one(task, engine, data, method: str, variant: str, cfg: RunConfig) -> dict:
    spec = all_methods()[method]
    record = {"task": task.name, "method": method, "variant": variant, "seed": cfg.seed, "device": cfg.device,
              "ablation": data.ablation, "split": cfg.split, "output": spec.output, "n_examples": data.n}
    torch.manual_seed(cfg.seed)
    _sync(cfg.device)
    t0 = time.perf_counter()
    kwargs = {"seed": cfg.seed} if method == "random" else {}
    result = spec.run(engine, data, variant, **kwargs)
    _sync(cfg.device)
    record["seconds"] = time.perf_counter() - t0
    graph = engine.graph
    if isinstance(result, CircuitFamily):
        scores = result.circuits.cpu()
        record["thresholds"] = [float(x) for x in result.thresholds]
    else:
        scores = result.detach().double().cpu()
        if not torch.isfinite(scores).all():
            raise FloatingPointError(f"{method}/{variant} produced non-finite scores")
        record["scores"] = scores.tolist()
    rows = []
    for gt_name, gt in task.ground_truths().items():
        res = score_edges_and_nodes(graph, scores, gt.edge_mask(graph))
        for level, r in res.items():
            keep = np.linspace(0, len(r.fpr) - 1, min(len(r.fpr), 400)).round().astype(int)
            rows.append({"ground_truth": gt_name, "level": level, "auc": r.auc, "pessimistic_auc": r.pessimistic_auc,
                         "n_edges": r.n_items, "n_positive": r.n_positive,
                         "roc": {"fpr": r.fpr[keep].tolist(), "tpr": r.tpr[keep].tolist()}})
    record["rows"] = rows
    record["status"] = "ok"
    record["error"] = None
    return record


def run(cfg: RunConfig, log=print) -> ResultStore:
    cfg.device = resolve_device(cfg.device)
    store = ResultStore(cfg.out)
    if cfg.fresh:
        store.clear()
    jobs = jobs_for(cfg)
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
                    data = task.data(cfg.split, cfg.seed, cfg.ablation)
                    loaded[t] = (task, engine, data, None)
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
    return store


def offline_tasks() -> list:
    return [name for name, cls in TASKS.items() if getattr(cls, "offline", True)]
