"""Method registry. A method is a function (engine, data, **options) -> EdgeScores | CircuitFamily.

Each method declares its variants (name -> options) so the CLI and `list` learn them from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class CircuitFamily:
    """Nested or independent circuits from a sweep (e.g. ACDC thresholds): bool [k, n_edges]."""

    circuits: torch.Tensor
    thresholds: list = field(default_factory=list)


@dataclass
class MethodSpec:
    name: str
    fn: Callable
    description: str
    variants: dict  # variant name -> (options dict, one-line description)
    output: str = "ranking"  # or "family"
    default_variants: tuple = ()
    # Methods whose cost grows with (edges x examples) forwards run by default only on graphs up
    # to this size; asked for by name (--methods) they always run.
    default_max_edges: int | None = None

    def options(self, variant: str) -> dict:
        if variant not in self.variants:
            raise KeyError(f"method {self.name!r} has no variant {variant!r}; variants: {', '.join(self.variants)}")
        return dict(self.variants[variant][0])

    def run(self, engine, data, variant: str, **overrides):
        opts = self.options(variant)
        opts.update(overrides)
        return self.fn(engine, data, **opts)


METHODS: dict[str, MethodSpec] = {}


def register(name: str, description: str, variants: dict, output: str = "ranking", default_variants=None,
             default_max_edges=None):
    def deco(fn):
        METHODS[name] = MethodSpec(name, fn, description, variants, output, tuple(default_variants or variants),
                                   default_max_edges)
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    _load_all()
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None


def all_methods() -> dict:
    _load_all()
    return METHODS


def _load_all():
    from harness.methods import acdc  # noqa: F401  (registration side effects)
    from harness.methods import eap  # noqa: F401  (registration side effects)
    from harness.methods import eap_ig  # noqa: F401  (registration side effects)
    from harness.methods import grad_wrong  # noqa: F401  (registration side effects)
    from harness.methods import patching  # noqa: F401  (registration side effects)
    from harness.methods import random_baseline  # noqa: F401  (registration side effects)
