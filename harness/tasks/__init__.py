"""Task registry: every task the harness knows, by name."""
from __future__ import annotations

from .base import Task, TaskData
from .tracr_tasks import TracrReverse, TracrXProportion

TASKS: dict[str, type] = {
    TracrXProportion.name: TracrXProportion,
    TracrReverse.name: TracrReverse,
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def register_task(cls):
    TASKS[cls.name] = cls
    return cls


__all__ = ["Task", "TaskData", "TASKS", "get_task", "register_task"]
