"""Named run presets for the generated suite (issue 17) and the SIIT-trained models (issue 18):
which circuits, which methods, which options. `circuit-bench run --preset NAME` applies one;
anything given on the command line (--tasks, --methods, --bootstrap, ...) overrides the preset's
value. Every preset is resumable like
any run: its records are keyed by everything that changes a result (harness.run.store), so a
rerun into the same --out recomputes only what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# The quick preset's circuits: library programs of every shape tracr's lib has that scores
# cleanly (histogram, sort, a numerical mean, a balance check, a frequency sort, a counting
# selector) and generated programs from small to the largest graphs, so the suite statistics
# have both ends of the size range.
QUICK_LIBRARY = ("lib-hist-3x4", "lib-frac_prevs-4x5", "lib-sort-4x4", "lib-pair_balance-3x4", "lib-sort_freq-3x4",
                 "lib-count_less_freq-3x5")
QUICK_GENERATED_COUNT = 8  # the first kept seeds of the grammar (harness.programs.grammar.GENERATED_SEEDS)

# Methods that rank every edge of a tracr model in seconds; SP (a trained mask, ~4 s a task) and
# ACDC's sweep (~1 s a task) stay in the full suite.
QUICK_METHODS = ("act-patch-edge", "act-patch-node", "eap", "eap-ig", "eap-gp", "atp-star", "relp", "hisp",
                 "grad-wrong", "random", "structure")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    tasks: tuple  # suite task names (registered by the CLI: harness.tasks.suite_tasks.register_suite)
    methods: tuple  # empty: every method
    options: dict = field(default_factory=dict)  # RunConfig fields the preset sets


def _quick_tasks() -> tuple:
    from harness.programs.grammar import GENERATED

    return tuple("suite:" + n for n in QUICK_LIBRARY + tuple(list(GENERATED)[:QUICK_GENERATED_COUNT]))


def _all_tasks() -> tuple:
    from harness.programs.suite import suite_tasks

    return tuple(suite_tasks())


def _trained_tasks() -> tuple:
    from harness.tasks.trained_tasks import cards

    return tuple(t for c in cards() if c.get("shipped") for t in (c["base_task"], c["task"]))


def get_preset(name: str) -> Preset:
    """The preset `name` (KeyError naming the known ones)."""
    if name == "suite-quick":
        return Preset(name, "14 suite circuits (6 of tracr's library, the grammar's first 8), the methods that run "
                            "in seconds, both references, no reset controls, no bootstrap or faithfulness: "
                            "under 10 minutes on 2 CPU cores",
                      _quick_tasks(), QUICK_METHODS,
                      {"controls": ("trained",), "bootstrap": 0, "faithfulness": False})
    if name == "suite":
        return Preset(name, "every suite circuit (tracr's library and the grammar's), every method, both references, "
                            "no reset controls, no bootstrap (the suite statistics resample circuits instead)",
                      _all_tasks(), (), {"controls": ("trained",), "bootstrap": 0})
    if name == "trained":
        return Preset(name, "every SIIT-trained model and its compiled program, every method, resample ablation only "
                            "(the strict check trains the models for it: docs/trained.md#which-reference), no reset "
                            "controls, no bootstrap",
                      _trained_tasks(), (), {"controls": ("trained",), "bootstrap": 0, "ablations": ("resample",)})
    raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")


PRESETS = ("suite-quick", "suite", "trained")
