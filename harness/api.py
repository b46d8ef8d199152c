"""The Python API: load a task into an engine and data, run a method, get its scores as a named
frame, score it. The same steps the main job takes (`harness.run.runner`), so a score here equals
the run's record of it and the row of `scores.parquet`.

    from harness import api
    loaded = api.load("tracr-reverse")                                # engine, data, graph; resample
    scores = api.run_method(loaded, "grad-wrong", "uniform/activation")  # a row per edge, named
    print(api.score(loaded, scores).to_string())                      # AUCs per ground truth and level
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import pandas as pd
import torch

from harness.core.engine import Engine
from harness.core.graph import Graph
from harness.eval.bootstrap import score_all
from harness.methods import get_method
from harness.methods.memory import examples_per_pass
from harness.run.runner import RunConfig, compute, task_dtype, task_data
from harness.run.store import position_frame, scores_frame
from harness.tasks import Task, get_task


@dataclass
class Loaded:
    """A task ready to run: its model in an `Engine`, its data (`TaskData`, at one reference:
    `data.ablation`), its graph, and the examples per pass of the gradient methods."""

    task: Task
    engine: Engine
    data: object
    chunk: int

    @property
    def graph(self) -> Graph:
        return self.engine.graph

    @property
    def reference(self) -> str:
        return self.data.ablation

    def with_reference(self, reference: str) -> "Loaded":
        """The same task measured against another reference ("resample" or "zero")."""
        return dataclasses.replace(self, data=self.data.with_ablation(reference))


def load(task: str, *, reference: str = "resample", device: str = "cpu", dtype: Optional[str] = None,
         weights_dir: Optional[str] = None, split: str = "validation", seed: int = 0, metric: Optional[str] = None,
         position_scramble: bool = True) -> Loaded:
    """Load `task` (a name from `circuit-bench list`) as `circuit-bench run` does with the same
    options: its default dtype unless `dtype` ("float32"/"float64"), its ACDC metric unless `metric`."""
    t = get_task(task)
    cfg = RunConfig(tasks=[task], methods=[], dtype=dtype, metric=metric, split=split, seed=seed, device=device,
                    weights_dir=weights_dir, position_scramble=position_scramble)
    weights = t.load_model(device, task_dtype(cfg, t), weights_dir)  # in the run's order: weights, then data
    data = task_data(t, cfg)
    if not position_scramble:
        data = dataclasses.replace(data, position_scramble=None)
    chunk = examples_per_pass(weights.cfg, data.clean.shape[1], data.n, weights.dtype)
    return Loaded(t, Engine(weights), data.with_ablation(reference), chunk)


def run_method(loaded: Loaded, method: str, variant: Optional[str] = None, *, seed: int = 0,
               per_position: bool = False) -> pd.DataFrame:
    """Scores of one variant (default: the method's first default variant), a row per edge:
    task, method, variant, ablation (the reference), control, edge (index), sender, receiver,
    edge_type, score, tie_floor (scores closer than it tie). Rankings use |score|. A method whose
    output is a family of circuits (ACDC) has no scores: use the CLI for it.
    `per_position`: a row per (token position, edge) instead, with a `position` column and no
    tie_floor; each edge's rows sum to its score (docs/methods.md#per-position-edge-scores)."""
    spec = get_method(method)
    variant = variant or spec.default_variants[0]
    if spec.output != "ranking":
        raise ValueError(f"{method} gives circuits at thresholds, not per-edge scores; run it with `circuit-bench run`")
    if per_position:
        if not spec.supports_per_position(variant):
            raise ValueError(f"{method}/{variant} gives no per-position scores")
        torch.manual_seed(seed)
        terms = spec.run(loaded.engine, loaded.data, variant, seed=seed, per_position=True, chunk=loaded.chunk)
        rec = {"task": loaded.task.name, "method": method, "variant": variant, "ablation": loaded.reference,
               "position_scores": terms.detach().double().cpu().tolist()}
        return position_frame(rec, loaded.graph.edge_endpoints, loaded.graph.edge_types)
    done = compute(spec, loaded.engine, loaded.data, variant, seed, loaded.chunk, str(loaded.engine.w.device))
    rec = {"task": loaded.task.name, "method": method, "variant": variant, "ablation": loaded.reference,
           "scores": done.scores.tolist(), "tie_floor": done.floor}
    return scores_frame(rec, loaded.graph.edge_endpoints, loaded.graph.edge_types)


def score(loaded: Loaded, scores: pd.DataFrame) -> pd.DataFrame:
    """ROC AUC and ACDC's pessimistic AUC of a `run_method` frame (or any frame with `edge` and
    `score` for every edge and one `tie_floor`) against each of the task's ground truths, at edge
    and node level: ground_truth, level, auc, pessimistic_auc, n_edges, n_positive, note."""
    g = loaded.graph
    ordered = scores.sort_values("edge")
    if list(ordered["edge"]) != list(range(g.n_edges)):
        raise ValueError(f"scores must hold each of the graph's {g.n_edges} edges once (edge = 0..{g.n_edges - 1})")
    floors = set(ordered["tie_floor"]) if "tie_floor" in ordered else {0.0}
    if len(floors) != 1:
        raise ValueError("scores holds more than one ranking (several tie floors); pass one run's rows")
    values = torch.tensor(ordered["score"].to_numpy(), dtype=torch.float64)
    rows = [{"ground_truth": gt, "level": level, "auc": r.auc, "pessimistic_auc": r.pessimistic_auc,
             "n_edges": r.n_items, "n_positive": r.n_positive, "note": r.note}
            for (gt, level), r in score_all(loaded.task, g, values, floors.pop()).items()]
    return pd.DataFrame(rows, columns=["ground_truth", "level", "auc", "pessimistic_auc", "n_edges", "n_positive", "note"])
