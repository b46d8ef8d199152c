"""The method contract and registry.

A method is a function `fn(engine, data, **options)` returning edge scores, a tensor
[n_edges] (rankings use |score|), or a `CircuitFamily`. It declares, when it registers, what the
runner and the benchmarks need to know, so nothing is found out by inspecting its signature:

- variants: name -> (options, one-line description); `default_variants` run when none is named;
- output: "ranking" or "family";
- references: the references (`TaskData.ablation`: the source patched from, or the point a
  gradient is taken against) it measures against: a tuple for every variant, or a dict variant ->
  tuple (a variant that is not listed accepts every reference). The runner runs a variant only
  under the references it accepts, and results are only compared within one reference;
- gradient: it scores edges from gradients (the benchmarks compare these with patching);
- chance: a chance baseline (seeded): the runner reports its mean AUC over 20 seeds and their
  spread, never one draw;
- model_free: it never runs the model (chance and structure-only baselines), so a reset-network
  control of it would say nothing and is not run;
- seeded: it takes `seed=`; per_example: it takes `per_example=True` and then returns
  [batch, n_edges] terms that sum over examples to its scores (True, False, or the variants that
  do), which makes bootstrap intervals one run instead of one run per resample; a ranking variant
  with per-example scores is run in passes of `chunk` examples here (`MethodSpec.run`);
- per_position: it takes `per_position=True` and then returns [pos, n_edges] terms (one per token
  position of the prompts; [batch, pos, n_edges] with per_example too) that sum over positions to
  its scores (True, False, or the variants that do): which tokens an edge's effect passes through
  (docs/methods.md#per-position-edge-scores). Not for `aggregate="abs"` variants, whose
  |per-example| sums do not split over positions;
- chunks_itself: variants without per-example scores whose function takes `chunk=` and passes at
  most that many examples at a time itself, equal to one pass (grad-wrong's weight sites);
- grid: (rows, columns), each name -> one-line description, when every variant is "row/column"
  (grad-wrong: targets x gradient sites); `circuit-bench list` then shows a grid, not each line;
- default_max_edges: skipped by default on larger graphs (cost grows with edges x examples);
- architectures: the models it runs on (`ARCHITECTURES`): "all" (it reads the model only through
  the engine and the graph), "one-kv" (not grouped-query attention: it works per head on q/k/v
  weights or components), "gpt2-style" (it re-derives parts of the GPT-2-style forward by hand:
  no RMSNorm, rotary, grouped-query attention, gated or parallel MLPs); or a function of a
  variant's options giving one of these. A run skips a job whose model it does not cover, saying why;
- timings: how `circuit-bench bench` times it (`Timing`, one per timed row), given the bench
  settings;
- objective(options, logits, clean_logits, source_logits, data) -> [batch] or scalar: the
  objective its scores are changes of; a method with one gets a measured tie floor
  (`harness.eval.round_off`; `objective_scale` bounds it below); None: scores with no units, e.g.
  random, tie only when equal.

A variant option `aggregate="abs"` (methods with per-example scores) is handled here: the score
is the sum over examples of |per-example score|, a form whose effects cannot cancel over the
batch (docs/scoring.md#ties-round-off-and-degenerate-objectives).

Adding a method: one module in this folder (found without a hand-kept list), or one anywhere
else loaded with `circuit-bench --plugin MODULE` or the `circuit_bench.plugins` entry point,
that calls `register`.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from harness.core.data import ABLATIONS

OUTPUTS = ("ranking", "family")
ARCHITECTURES = {  # level -> (does a config pass, what the method lacks)
    "all": (lambda cfg: True, ""),
    "one-kv": (lambda cfg: cfg.kv_heads == cfg.n_heads,
               "it works per head on q/k/v and has no grouped-query attention (shared key/value heads) yet"),
    "gpt2-style": (lambda cfg: cfg.gpt2_style,
                   "it re-derives parts of the GPT-2-style forward (LayerNorm, learned positions, one key/value head "
                   "per head, plain sequential MLPs) and has no RMSNorm, rotary, grouped-query, gated or parallel "
                   "blocks yet"),
}


class UnsupportedArchitecture(ValueError):
    """A method asked to run on a model family it does not cover (`MethodSpec.unsupported`)."""


@dataclass
class CircuitFamily:
    """Nested or independent circuits from a sweep (e.g. ACDC thresholds): bool [k, n_edges]."""

    circuits: torch.Tensor
    thresholds: list = field(default_factory=list)


def as_scores(result) -> torch.Tensor:
    """A method's result on the CPU: float64 scores [n_edges], or a family's bool [k, n_edges]."""
    if isinstance(result, CircuitFamily):
        return result.circuits.cpu()
    scores = result.detach().double().cpu()
    if not torch.isfinite(scores).all():
        raise FloatingPointError("method produced non-finite scores")
    return scores


@dataclass(frozen=True)
class Timing:
    """One timed row of a method (see harness.bench).

    variant: the registered variant run; label: the row's name (default: the variant);
    options: overrides for the run (e.g. one ACDC threshold), or graph -> overrides;
    patched_forwards(graph, batch) -> int: for methods that loop over patched forwards, how many
        a full run makes (upper_bound: at most that many), so a run cut at a budget extrapolates;
    sampled_edges: the run covers a sample of edges by design (`edges=` option) and scales up;
    memory_bytes(engine, batch, seq_len) -> int: a known large allocation, checked first.
    """

    variant: str
    label: Optional[str] = None
    options: dict = field(default_factory=dict)
    patched_forwards: Optional[Callable] = None
    upper_bound: bool = False
    sampled_edges: bool = False
    memory_bytes: Optional[Callable] = None


@dataclass
class MethodSpec:
    name: str
    fn: Callable
    description: str
    variants: dict  # variant name -> (options dict, one-line description)
    output: str = "ranking"
    default_variants: tuple = ()
    references: object = ABLATIONS  # tuple, or dict variant -> tuple
    gradient: bool = False
    seeded: bool = False
    per_example: object = False  # bool, or the variants that support it
    per_position: object = False  # bool, or the variants that support it
    default_max_edges: Optional[int] = None
    timings: Optional[Callable] = None  # bench settings -> [Timing]
    objective: Optional[Callable] = None  # (options, logits, clean_logits, source_logits, data) -> values
    chance: bool = False
    model_free: bool = False
    chunks_itself: frozenset = frozenset()
    grid: Optional[tuple] = None  # (row name -> description, column name -> description)
    architectures: object = "all"  # a level of ARCHITECTURES, or variant options -> level

    def unsupported(self, cfg, variant: str) -> Optional[str]:
        """Why this variant cannot run on a model of config `cfg`, or None when it can."""
        level = self.architectures(self.options(variant)) if callable(self.architectures) else self.architectures
        ok, lacks = ARCHITECTURES[level]
        if ok(cfg):
            return None
        return f"{self.name}/{variant} does not run on {cfg.name}: {lacks}"

    def add_variant(self, name: str, options: dict, description: str, *, references=None, per_example=None,
                    per_position=None, chunks_itself: bool = False, default: bool = False,
                    row_description: Optional[str] = None) -> None:
        """Declare one more variant after registration (grad-wrong's targets registered later, see
        `harness.methods.targets.register_target`). references: the tuple it accepts (None: every
        reference); per_example, per_position: whether it gives per-example (per-position) scores
        (None: as the method declared); a grid method's name is "row/column", column one of its columns, and a new
        row needs `row_description`."""
        if name in self.variants:
            raise ValueError(f"method {self.name!r} already has a variant {name!r}")
        if self.grid is not None:
            row, _, col = name.partition("/")
            if col not in self.grid[1]:
                raise ValueError(f"{self.name}: variant {name!r} is not ROW/COLUMN with a column of {', '.join(self.grid[1])}")
            if row not in self.grid[0]:
                if row_description is None:
                    raise ValueError(f"{self.name}: new row {row!r} needs a row_description")
                self.grid[0][row] = row_description
        if per_example is not None:
            supported = {v for v in self.variants if self.supports_per_example(v)} | ({name} if per_example else set())
        if per_position is not None:
            by_position = {v for v in self.variants if self.supports_per_position(v)} | ({name} if per_position else set())
        if references is not None:
            if not isinstance(self.references, dict):
                self.references = {v: self.references for v in self.variants}
            self.references[name] = tuple(references)
        elif not isinstance(self.references, dict) and tuple(self.references) != tuple(ABLATIONS):
            self.references = {v: self.references for v in self.variants}  # keep the others' and let this one take any
        self.variants[name] = (dict(options), description)
        if per_example is not None:
            self.per_example = frozenset(supported)
        if per_position is not None:
            self.per_position = frozenset(by_position)
        if chunks_itself:
            self.chunks_itself = self.chunks_itself | {name}
        if default:
            self.default_variants = (*self.default_variants, name)

    def options(self, variant: str) -> dict:
        if variant not in self.variants:
            raise KeyError(f"method {self.name!r} has no variant {variant!r}; variants: {', '.join(self.variants)}")
        return dict(self.variants[variant][0])

    def references_for(self, variant: str) -> tuple:
        if isinstance(self.references, dict):
            return tuple(self.references.get(variant, ABLATIONS))
        return tuple(self.references)

    def supports_per_example(self, variant: str) -> bool:
        if isinstance(self.per_example, bool):
            return self.per_example
        return variant in self.per_example

    def supports_per_position(self, variant: str) -> bool:
        if self.variants.get(variant, ({}, ""))[0].get("aggregate", "sum") == "abs":
            return False  # sum over examples of |per-example score|: no split over positions
        if isinstance(self.per_position, bool):
            return self.per_position
        return variant in self.per_position

    def objective_scale(self, engine, data, variant: str) -> float:
        """The magnitude of the variant's objective: the larger of mean |objective| over the clean
        and over the source run (`harness.core.references`); 0 for a method without one."""
        if self.objective is None:
            return 0.0
        from harness.core.references import reference_logits

        clean, source = reference_logits(engine, data)  # at the scored columns
        scored = data.scored()[1]
        opts = self.options(variant)
        with torch.no_grad():
            return max(float(torch.as_tensor(self.objective(opts, L, clean, source, scored)).abs().double().mean())
                       for L in (clean, source))

    def run(self, engine, data, variant: str, *, seed: Optional[int] = None, per_example: bool = False,
            per_position: bool = False, chunk: Optional[int] = None, **overrides):
        """Run one variant. `seed` reaches seeded methods only; `per_example` and `per_position`
        must be supported (they keep the batch and the position axis: [batch, pos, n_edges] with both).
        `chunk`: at most that many examples per pass, for variants with per-example scores (their
        terms add over examples, so chunks combine exactly, weighted by their share of the
        examples); variants in `chunks_itself` pass it on; other variants see the whole batch."""
        if chunk and self.splits(variant, data.n, chunk):  # model-free methods may get data without examples
            return self._run_chunked(engine, data, variant, chunk, seed, per_example, per_position, overrides)
        why = self.unsupported(engine.graph.cfg, variant)
        if why:
            raise UnsupportedArchitecture(why)
        accepted = self.references_for(variant)
        if data.ablation not in accepted:
            raise ValueError(f"{self.name}/{variant} does not measure against a {data.ablation!r} reference "
                             f"(it accepts: {', '.join(accepted)})")
        opts = self.options(variant)
        opts.update(overrides)
        if chunk and variant in self.chunks_itself and data.n > chunk:
            opts["chunk"] = chunk
        if self.seeded and seed is not None:
            opts["seed"] = seed
        absolute = opts.pop("aggregate", "sum") == "abs"
        if per_example or absolute:
            if not self.supports_per_example(variant):
                raise ValueError(f"{self.name}/{variant} gives no per-example scores")
            opts["per_example"] = True
        if per_position:
            if not self.supports_per_position(variant):
                raise ValueError(f"{self.name}/{variant} gives no per-position scores")
            opts["per_position"] = True
        result = self.fn(engine, data, **opts)
        if absolute:
            result = result.abs() if per_example else result.abs().sum(0)
        if (self.output == "family") != isinstance(result, CircuitFamily):
            raise TypeError(f"method {self.name!r} declares output {self.output!r} but returned {type(result).__name__}")
        return result


    def splits(self, variant: str, n_examples: int, chunk: Optional[int]) -> bool:
        """Whether `run(..., chunk=chunk)` on `n_examples` examples runs in chunks."""
        return bool(chunk) and n_examples > chunk and self.output == "ranking" and self.supports_per_example(variant)

    def passes_of(self, variant: str, n_examples: int, chunk: Optional[int]) -> Optional[int]:
        """The examples per pass of `run(..., chunk=chunk)`, or None where it runs in one pass."""
        several = bool(chunk) and n_examples > chunk
        return chunk if several and (self.splits(variant, n_examples, chunk) or variant in self.chunks_itself) else None

    def _run_chunked(self, engine, data, variant, chunk, seed, per_example, per_position, overrides):
        """A ranking from chunks of `chunk` examples: each chunk's scores are means over its own
        examples (the objectives are batch means), so the batch's are their sum weighted by
        size; per-example terms (and |terms|, for aggregate="abs") are scaled the same way."""
        absolute = self.options(variant).get("aggregate", "sum") == "abs"
        parts = []
        for part, weight in data.passes(chunk):
            terms = self.run(engine, part, variant, seed=seed, per_example=per_example or absolute,
                             per_position=per_position, **overrides)
            parts.append(terms.detach() * weight)
        if per_example:
            return torch.cat(parts, 0)
        return torch.cat(parts, 0).sum(0) if absolute else torch.stack(parts).sum(0)


METHODS: dict[str, MethodSpec] = {}


def task_objective(default: str) -> Callable:
    """`objective=` for methods scoring changes of `harness.core.objectives.evaluate(options
    ["objective"])` (default `default`)."""
    from harness.core.objectives import evaluate

    return lambda opts, logits, clean_logits, source_logits, data: evaluate(opts.get("objective", default), logits, clean_logits, data)


def register(name: str, description: str, variants: dict, *, output: str = "ranking", default_variants=None,
             references=ABLATIONS, gradient: bool = False, seeded: bool = False, per_example=False, per_position=False,
             default_max_edges=None, timings=None, objective=None, chance=False, model_free=None, chunks_itself=(),
             grid=None, architectures="all"):
    """Decorator: declare a method (see the module docstring for each field)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    unknown = set(default_variants or ()) - set(variants)
    if unknown:
        raise ValueError(f"{name}: default variants {sorted(unknown)} are not variants")
    if grid is not None and {f"{r}/{c}" for r in grid[0] for c in grid[1]} != set(variants):
        raise ValueError(f"{name}: the grid's rows x columns are not its variants")
    if not callable(architectures) and architectures not in ARCHITECTURES:
        raise ValueError(f"{name}: architectures must be one of {', '.join(ARCHITECTURES)} (or a function of a variant's options)")

    def deco(fn):
        METHODS[name] = MethodSpec(name, fn, description, variants, output, tuple(default_variants or variants),
                                   dict(references) if isinstance(references, dict) else tuple(references), gradient, seeded,
                                   per_example if isinstance(per_example, bool) else frozenset(per_example),
                                   per_position if isinstance(per_position, bool) else frozenset(per_position),
                                   default_max_edges, timings, objective, chance,
                                   chance if model_free is None else model_free, frozenset(chunks_itself),
                                   (dict(grid[0]), dict(grid[1])) if grid is not None else None, architectures)
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    load_methods()
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None


def all_methods() -> dict:
    load_methods()
    return METHODS


_LOADED = False


def load_methods() -> None:
    """Import every module of this package (each registers its methods), once."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    pkg = sys.modules[__name__.rsplit(".", 1)[0]]
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"{pkg.__name__}.{info.name}")


def load_plugin(spec: str) -> None:
    """Import a module that registers methods or tasks: a dotted module name or a .py file."""
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise FileNotFoundError(f"plugin file {spec!r} does not exist")
        name = f"circuit_bench_plugin_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
    else:
        importlib.import_module(spec)


def load_entry_point_plugins() -> None:
    """Import the modules installed packages declare under the `circuit_bench.plugins` entry point
    (in their pyproject.toml: `[project.entry-points."circuit_bench.plugins"] name = "module"`);
    each registers methods, tasks or grad-wrong targets as it is imported. One that fails to import
    is skipped with a one-line warning naming its package, so the rest of the CLI still works."""
    import warnings
    from importlib.metadata import entry_points

    for ep in entry_points(group="circuit_bench.plugins"):
        try:
            ep.load()
        except Exception as e:
            dist = getattr(ep, "dist", None)
            owner = f" of package {dist.metadata['Name']}" if dist is not None else ""
            warnings.warn(f"plugin {ep.name!r}{owner} ({ep.value}) was not loaded: {type(e).__name__}: {e}",
                          stacklevel=2)
