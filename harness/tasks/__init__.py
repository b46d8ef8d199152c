"""Task registry: every task the harness knows, by name."""
from __future__ import annotations

from harness.tasks.base import Task, TaskData
from harness.tasks.tracr_analogues import TracrDocstring, TracrGreaterThan, TracrInduction, TracrIOI
from harness.tasks.tracr_tasks import TracrReverse, TracrXProportion
from harness.tasks.docstring import Docstring
from harness.tasks.greaterthan import GreaterThan
from harness.tasks.induction import Induction
from harness.tasks.ioi import IOI

TASKS: dict[str, type] = {
    TracrXProportion.name: TracrXProportion,
    TracrReverse.name: TracrReverse,
    TracrInduction.name: TracrInduction,
    TracrIOI.name: TracrIOI,
    TracrGreaterThan.name: TracrGreaterThan,
    TracrDocstring.name: TracrDocstring,
}

# ACDC's four pretrained-model tasks (harness/tasks/pretrained.py)
TASKS.update({c.name: c for c in (IOI, GreaterThan, Docstring, Induction)})


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def register_task(cls):
    TASKS[cls.name] = cls
    return cls


__all__ = ["Task", "TaskData", "TASKS", "get_task", "register_task"]
