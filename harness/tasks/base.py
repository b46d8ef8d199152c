"""What a task is: how to get its model, its data for a split, and its ground truth.

A task never runs a model. Its data is a `harness.core.data.TaskData`: tokens, per-example
fields and a metric from `harness.core.objectives`.

Adding a task: subclass `Task` in one file, decorate it with `harness.tasks.register_task`, and
put its ground-truth files (`<task>.<variant>.json`) in `ground_truth/` (or in the folder named by
the class attribute `ground_truth_dir`, for a task that lives outside this package).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from harness.core.data import TaskData


class Task:
    """Base class. Subclasses set the class attributes and implement `load_model` and `data`."""

    name: str = ""
    model: str = ""  # architecture / model id
    description: str = ""
    offline: bool = True
    mirrors: Optional[str] = None  # for analogues: the ACDC task this one mirrors
    reproduction_only: bool = False  # another task's circuit on the paper's inputs: kept out of the headline test
    in_default_run: bool = True  # False: run only when named (the SIIT-trained models: `run --preset trained`)
    supports_kl: bool = True
    metrics: dict = {}  # name -> harness.core.data.Metric; the first is the default (ACDC's "Loss" metric)
    ground_truth_dir: Optional[Path] = None  # None: the package's ground_truth/ folder
    # False only for a task that defines no circuit (scores, no AUC); a task that has one and
    # finds no file for it is an error, not a run with empty AUCs.
    has_ground_truth: bool = True
    ground_truth_task: Optional[str] = None  # the task whose ground-truth files this one uses (None: its own)
    # Reset-network control (harness.core.reset): how this task's model is reset, and whether a
    # default run includes the control (small models only: it is reset_seeds runs per method).
    reset_kind: str = "acdc"
    reset_by_default: bool = False
    # The dtype a run uses unless told otherwise: float64 where models are small enough that
    # float32 round-off would otherwise decide rankings (tracr), float32 for pretrained models.
    default_dtype: torch.dtype = torch.float32

    def load_model(self, device="cpu", dtype=torch.float32, weights_dir=None):
        raise NotImplementedError

    def loading_line(self) -> str:
        """What loading this task does, said before it starts (it can take a while)."""
        return f"loading {self.model} and the task's data"

    def data(self, split: str = "validation", seed: int = 0, ablation: str = "resample") -> TaskData:
        raise NotImplementedError

    def ground_truth_paths(self) -> list:
        """The ground-truth files this task reads (their digests are part of every result's
        fingerprint); none found for a task that `has_ground_truth` raises GroundTruthError."""
        from harness.core.ground_truth import GroundTruthError, ground_truth_dir, ground_truth_paths

        task = self.ground_truth_task or self.name
        paths = list(ground_truth_paths(task, self.ground_truth_dir).values())
        if self.has_ground_truth and not paths:
            fix = ("add the task's files there, or set has_ground_truth = False on a task that defines no circuit"
                   if self.ground_truth_dir else "reinstall circuit-bench (its ground truths ship inside the package) "
                   "or point CIRCUIT_BENCH_GROUND_TRUTH at a folder that has them")
            where = self.ground_truth_dir or ground_truth_dir()
            raise GroundTruthError(f"task {self.name}: no ground-truth file {task}.<variant>.json in {where}: {fix}")
        return paths

    def read_ground_truths(self) -> tuple:
        """(variant -> GroundTruth, variant -> one-line problem of a file that cannot be used);
        raises like `ground_truth_paths` when the task's files are missing altogether."""
        from harness.core.ground_truth import read_ground_truths

        self.ground_truth_paths()
        return read_ground_truths(self.ground_truth_task or self.name, self.ground_truth_dir)

    def ground_truths(self) -> dict:
        """variant name -> GroundTruth (see harness.core.ground_truth); broken files are left out
        (`read_ground_truths` says why)."""
        return self.read_ground_truths()[0]

    def summary(self) -> dict:
        from harness.core.ground_truth import GroundTruthError

        try:
            gts, problems = self.read_ground_truths()
        except GroundTruthError as e:
            gts, problems = {}, {"*": str(e)}
        return {
            "name": self.name,
            "model": self.model,
            "offline": self.offline,
            "description": self.description,
            "mirrors": self.mirrors,
            "n_ground_truth_edges": {k: int(v.n_edges) for k, v in gts.items()},
            "ground_truth_problems": problems,
        }
