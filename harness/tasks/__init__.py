"""Task registry: every task the harness knows, by name.

Each module of this package defines its tasks and registers them with `register_task`; the
modules are found and imported here, so adding a task is one file (plus its ground-truth
data) and no list to edit. Tasks outside the package register the same way (a plugin module,
see `harness.methods.registry.load_plugin`).
"""
from __future__ import annotations

import importlib
import pkgutil

from harness.tasks.base import Task

TASKS: dict[str, type] = {}


def register_task(cls):
    """Class decorator: make `cls` (a `Task` subclass with a unique `name`) known by name."""
    if not (isinstance(cls, type) and issubclass(cls, Task)) or not cls.name:
        raise TypeError(f"register_task expects a Task subclass with a name, got {cls!r}")
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    """A task by name; `<task>@<model>` (a task on another model, `harness.tasks.on_model`) is
    registered on first use, so a cluster worker finds it as the driver did."""
    if name not in TASKS:
        from harness.tasks.on_model import resolve

        resolve(name)
    try:
        return TASKS[name]()
    except KeyError:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Task", "TASKS", "get_task", "register_task"]
