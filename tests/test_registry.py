"""The method contract: what a method declares is what the runner gets, and discovery needs no list."""
import re
from pathlib import Path

import pytest
import torch

from harness.core.engine import Engine
from harness.methods import get_method, register
from harness.methods.registry import METHODS, CircuitFamily, all_methods
from harness.tasks import TASKS, get_task


@pytest.fixture
def throwaway():
    names = []

    def make(name, fn, **kw):
        register(name, "test method", {"v": ({}, "only variant")}, **kw)(fn)
        names.append(name)
        return METHODS[name]

    yield make
    for n in names:
        METHODS.pop(n, None)


@pytest.fixture(scope="module")
def reverse():
    task = get_task("tracr-reverse")
    return Engine(task.load_model()), task.data()


def test_every_registering_module_is_discovered():
    """Each `@register("name"` in harness/methods is found, and each task module's tasks too."""
    src = Path(__file__).resolve().parents[1] / "harness"
    declared = set()
    for p in (src / "methods").glob("*.py"):
        declared |= set(re.findall(r'@register\(\s*"([^"]+)"', p.read_text()))
    assert declared and declared <= set(all_methods())
    classes = set()
    for p in (src / "tasks").glob("*.py"):
        classes |= set(re.findall(r"@register_task\nclass (\w+)", p.read_text()))
    from harness.tasks.trained_tasks import TrainedTask, cards

    assert classes == {cls.__name__ for cls in TASKS.values() if not issubclass(cls, TrainedTask)}
    # the SIIT-trained models: one task per shipped card, made at import (harness.tasks.trained_tasks)
    assert {n for n, c in TASKS.items() if issubclass(c, TrainedTask)} == {c["task"] for c in cards() if c["shipped"]}


def test_declared_output_is_enforced(throwaway, reverse):
    e, data = reverse
    spec = throwaway("says-ranking", lambda engine, data: CircuitFamily(torch.zeros(1, engine.graph.n_edges, dtype=torch.bool)))
    with pytest.raises(TypeError, match="declares output 'ranking'"):
        spec.run(e, data, "v")


def test_references_are_enforced(throwaway, reverse):
    e, data = reverse
    spec = throwaway("resample-only", lambda engine, data: torch.zeros(engine.graph.n_edges), references=("resample",))
    assert spec.run(e, data, "v").shape == (e.graph.n_edges,)
    with pytest.raises(ValueError, match="does not measure against a 'zero' reference"):
        spec.run(e, data.with_ablation("zero"), "v")


def test_seed_reaches_only_seeded_methods_and_per_example_only_where_declared(throwaway, reverse):
    e, data = reverse
    seen = {}
    plain = throwaway("plain", lambda engine, data: torch.zeros(engine.graph.n_edges))
    assert plain.run(e, data, "v", seed=3).shape == (e.graph.n_edges,)  # no seed= passed on: no TypeError
    with pytest.raises(ValueError, match="no per-example scores"):
        plain.run(e, data, "v", per_example=True)

    def seeded(engine, data, seed=0):
        seen["seed"] = seed
        return torch.zeros(engine.graph.n_edges)

    throwaway("seeded", seeded, seeded=True).run(e, data, "v", seed=7)
    assert seen["seed"] == 7
    gw = get_method("grad-wrong")
    assert gw.supports_per_example("uniform/activation") and not gw.supports_per_example("uniform/weight-node")


def test_default_variants_must_exist():
    with pytest.raises(ValueError, match="not variants"):
        register("bad-defaults", "x", {"a": ({}, "a")}, default_variants=["b"])
    assert "bad-defaults" not in METHODS
