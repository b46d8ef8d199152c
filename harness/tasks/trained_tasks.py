"""Trained models with known circuits: `trained-<task>`, an ordinary transformer taught a compiled
program's circuit by SIIT (harness.programs.siit; docs/trained.md).

Each shipped model is three files: `ground_truth/trained/<name>.safetensors` (the weights, float32),
`ground_truth/trained/<name>.json` (its card: architecture, training command, seed, time,
validation figures) and `ground_truth/<name>.correspondence.json` (its ground truth: the edges of
the compiled program's structural circuit, whose nodes the correspondence puts at the same
places, so the edge names are the compiled graph's). Every card found is registered as a task
at import; its data are the compiled task's, row for row (same inputs, corrupted inputs,
positions, metric and reference), so compiled and trained results pair one to one.

`train(base)` trains and writes one (`circuit-bench train-siit --task BASE`); a model whose
validation misses SHIP_THRESHOLDS is written under `rejected/`, never registered.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from harness.core.device import cpu_name
from harness.core.graph import Graph
from harness.core.ground_truth import GroundTruth, ground_truth_dir, save_ground_truth
from harness.core.weights import ModelConfig, Weights
from harness.programs import siit
from harness.programs.rasp_programs import PROGRAMS
from harness.tasks import TASKS, get_task, register_task
from harness.tasks.tracr_tasks import TracrTask

PREFIX = "trained-"
VARIANT = "correspondence"
POOL = 4096  # training inputs drawn per model (all of them where fewer exist)
RANDOM_MIN_DEFINED = 0.25  # analogues: add uniform sequences when the program answers on this share of them
RANDOM_PAIRS = 256  # validation: random pairs of the pool besides the task's own (clean, corrupted) rows
# A model is shipped only when its validation (float64, harness.programs.siit.SIITPair.validate)
# meets every one of these (docs/trained.md#validation says why these values).
SHIP_THRESHOLDS = {"accuracy": (">=", 0.99), "iia": (">=", 0.95), "strict": (">=", 0.95), "strict_min": (">=", 0.85),
                   "strict_effect_max": ("<=", 0.05), "shift_share": ("<=", 0.25)}


def trained_dir() -> Path:
    return ground_truth_dir() / "trained"


def trained_name(base: str) -> str:
    """`trained-<base>`, a suite program's without its `suite:` prefix."""
    return PREFIX + base.removeprefix("suite:")


def base_task(name: str):
    """The compiled task `name` (a suite program registered first when needed)."""
    if name.startswith("suite:") and name not in TASKS:
        from harness.tasks.suite_tasks import register_suite

        register_suite([name])
    task = get_task(name)
    if isinstance(task, TrainedTask):
        raise ValueError(f"{name} is a trained model already: name its compiled program, {task.base}")
    if not isinstance(task, TracrTask):
        raise ValueError(f"{name} is not a compiled (tracr) task: SIIT needs a compiled program as its high-level model")
    return task


def input_length(task) -> int:
    return task.data("validation").clean.shape[1] - 1


def training_inputs(task, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """[N, pos] token ids the training pairs are drawn from (training_pool's inputs)."""
    return training_pool(task, n, seed)[0]


def training_pool(task, n: int | None = None, seed: int = 0) -> tuple:
    """(inputs [N, pos] token ids the training pairs are drawn from, partner [N] long: each row's
    counterpart in a (clean, corrupted) prompt pair, -1 for rows without one). Programs over a
    vocabulary: every sequence of the task's length when at most n exist, else n distinct uniform
    draws. Analogues (structured prompts): prompts from the task's generator (clean and corrupted forms, with seeds
    no evaluation split uses; rows 2k and 2k + 1 are one prompt's two forms, a minimal pair like
    the ones methods are scored on); half of them are replaced by uniform sequences over the program's
    vocabulary where the compiled program answers (a one-hot at the scored positions) on at least
    RANDOM_MIN_DEFINED of those: fixed templates alone let a trained model read answers off
    positions (a positional shortcut, docs/trained.md#training-data) instead of implementing the
    program's heads, and sequences without an answer teach nothing. An analogue whose
    `siit_inputs` is "uniform" (Induction) trains on uniform sequences alone: its prompts put every
    answer at one distance, a shortcut even half of the pool teaches. One whose `siit_inputs` is
    "prompts-only" (Docstring) trains on prompts alone, `siit_pool` of them: a uniform sequence's last
    token is mostly a parameter, where the program copies it, so the half teaches a copy, not the lookup.
    n: the pool's size (default the task's `siit_pool`, else POOL)."""
    n = getattr(task, "siit_pool", POOL) if n is None else n
    m = task.tracr()
    spec = getattr(task, "spec", None) or PROGRAMS[task.program]
    vocab, length = list(spec.vocab), input_length(task)
    rng = random.Random(7_777_777 + seed)
    seqs = []
    inputs = getattr(task, "siit_inputs", "prompts")
    if hasattr(task, "examples") and inputs in ("prompts", "prompts-only"):  # a RASP analogue
        share = 0.5 if inputs == "prompts" and random_defined(task) >= RANDOM_MIN_DEFINED else 0.0
        while len(seqs) < n * (1 - share):
            clean, corr, *_ = task.examples(rng)
            seqs += [clean, corr]
        n = n - len(seqs)
    paired = len(seqs)
    distinct = getattr(task, "distinct_tokens", False)
    if 0 < n and len(vocab) ** length <= n:
        seqs += [list(s) for s in itertools.product(vocab, repeat=length) if not distinct or len(set(s)) == length]
    elif 0 < n:
        seen, draws = set(), []
        while len(draws) < n:
            s = tuple(rng.choice(vocab) for _ in range(length))
            if s not in seen and (not distinct or len(set(s)) == length):
                seen.add(s)
                draws.append(list(s))
        seqs += draws
    partner = torch.full((len(seqs),), -1, dtype=torch.long)
    partner[:paired] = torch.arange(paired) ^ 1
    return m.encode(seqs), partner


def with_role_swaps(task, inputs: torch.Tensor, partner: torch.Tensor) -> tuple:
    """training_pool's (inputs, partner) with each clean prompt's role swap (`task.role_swap`: IOI's
    names exchanged) appended as a new row, in the clean rows' order. Partners: a clean prompt and
    its swap each other's; a corrupted prompt keeps its clean one. The rows before the swaps are
    `inputs` unchanged, so validation can keep drawing from them."""
    if not hasattr(task, "role_swap"):
        raise ValueError(f"{task.name} defines no role swap (tracr-ioi does): use the corruption as counterpart")
    m = task.tracr()
    token = {i: t for t, i in m.input_encoding.items()}
    clean = torch.where((partner >= 0) & (torch.arange(len(partner)) % 2 == 0))[0]
    swaps = m.encode([task.role_swap([token[int(i)] for i in inputs[r, 1:]]) for r in clean])
    rows = len(inputs) + torch.arange(len(clean))
    partner = torch.cat([partner, clean])
    partner[clean] = rows
    return torch.cat([inputs, swaps]), partner


def random_defined(task, n: int = 512) -> float:
    """The share of scored positions where the compiled program answers (a one-hot) on n uniform
    sequences over its vocabulary (seeded)."""
    from harness.core.engine import Engine

    m = task.tracr()
    rng = random.Random(0)
    seqs = [[rng.choice(list(task.spec.vocab)) for _ in range(input_length(task))] for _ in range(n)]
    out = Engine(m.weights).logits(m.encode(seqs))[:, task.data("validation").pos_mask[0]]
    return float((out.amax(-1) > siit.DEFINED).double().mean())


def validation_pairs(task, pool: torch.Tensor, seed: int = 0) -> tuple:
    """(base, source) [N, pos] each: the task's own clean and corrupted rows of both evaluation
    splits (what methods are scored on), then RANDOM_PAIRS random pairs of `pool`."""
    rows = [task.data(split) for split in ("validation", "test")]
    g = torch.Generator().manual_seed(10_007 + seed)
    bi, si = torch.randint(len(pool), (2, RANDOM_PAIRS), generator=g)
    return (torch.cat([d.clean for d in rows] + [pool[bi]]), torch.cat([d.corrupted for d in rows] + [pool[si]]))


def make_pair(task, ll: Weights, dtype=torch.float32, device="cpu") -> siit.SIITPair:
    """The SIIT pair of compiled `task` (HL) and `ll` on `device`: the correspondence puts every
    head and MLP of the compiled structural circuit at its own place in the LL."""
    m = task.tracr()
    hl = m.weights.to(device, dtype)
    hl_graph = Graph(hl.cfg)
    nodes = siit.circuit_senders(hl_graph, circuit_edges(task))
    corr = siit.Correspondence.same_place(hl_graph, Graph(ll.cfg), nodes)
    return siit.SIITPair(hl, ll.to(device, dtype), corr, task.data("validation").pos_mask[0].to(device),
                         m.categorical_output)


# The train-siit options a card's command names, in the order it names them: (TrainConfig field, flag). An
# option appears only where its value differs from TrainConfig's default; a boolean is its flag alone. The
# shipped cards' commands fix this order (tests/test_siit.py parses each back into its card's config).
COMMAND_OPTIONS = (("max_steps", "--max-steps"), ("strict_nodes", "--strict-nodes"), ("strict_weight", "--strict-weight"),
                   ("strict_logits", "--strict-logits"), ("step_per_loss", "--step-per-loss"),
                   ("strict_grad", "--strict-grad"), ("mixture_labels", "--mixture-labels"),
                   ("blank_weight", "--blank-weight"), ("average_weight", "--average-weight"),
                   ("centre_weight", "--centre-weight"), ("strict_focus", "--strict-focus"),
                   ("label_smoothing", "--label-smoothing"), ("width_step", "--width-step"),
                   ("min_heads", "--min-heads"), ("paired_share", "--paired-share"),
                   ("paired_strict", "--paired-strict"), ("counterpart", "--counterpart"),
                   ("iit_weight", "--iit-weight"), ("lr", "--lr"))


def command(base: str, tc: siit.TrainConfig, threads: int) -> str:
    """The `circuit-bench train-siit` command that trains `base` with `tc` on `threads` CPU threads."""
    default = siit.TrainConfig()
    words = [f"circuit-bench train-siit --task {base} --seed {tc.seed} --threads {threads}"]
    for name, flag in COMMAND_OPTIONS:
        v = getattr(tc, name)
        if v != getattr(default, name):
            words.append(flag if isinstance(v, bool) else f"{flag} {v:g}" if isinstance(v, float) else f"{flag} {v}")
    return " ".join(words)


def circuit_edges(task) -> list:
    """The compiled program's structural ground truth: the correspondence's nodes and edges."""
    return list(task.ground_truths()["structural"].edges)


def passes(figures: dict) -> list:
    """The thresholds `figures` misses, as one-line reasons (empty: it may be shipped)."""
    out = []
    for k, (op, v) in SHIP_THRESHOLDS.items():
        ok = figures[k] >= v if op == ">=" else figures[k] <= v
        if not ok:
            out.append(f"{k} {figures[k]:.4f} (needs {op} {v})")
    return out


def validation(task, weights: Weights, seed: int = 0, pool: torch.Tensor | None = None) -> dict:
    """The validation figures of `weights` on `task`'s pairs, in float64 (`pool`: the training
    inputs of `seed`, when the caller has them)."""
    pair = make_pair(task, weights, torch.float64)
    pool = training_inputs(task, seed=seed) if pool is None else pool
    base, source = validation_pairs(task, pool, seed)
    return pair.validate(base, source)


def _round(x):
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


def train(base: str, tc: siit.TrainConfig = siit.TrainConfig(), directory=None, progress=None, device="cpu") -> dict:
    """Train `trained-<base>` by SIIT on `device`, validate it (on the CPU, float64), and write its
    files (module docstring) to `directory` (default: the package's ground_truth/), or under
    `rejected/` when it misses SHIP_THRESHOLDS. Returns its card."""
    from safetensors.torch import save_file

    task = base_task(base)
    name = trained_name(base)
    m = task.tracr()
    cfg = siit.ll_config(m.weights.cfg, name, tc)
    ll = siit.init_weights(cfg, tc.seed)
    pair = make_pair(task, ll, device=device)
    pool, partner = training_pool(task, seed=tc.seed)
    vb, vs = validation_pairs(task, pool, tc.seed)
    train_pool = pool
    if tc.counterpart not in ("corruption", "swap") or (tc.counterpart == "swap" and not tc.paired_share):
        raise ValueError(f"counterpart {tc.counterpart!r}: 'corruption', or 'swap' with a paired_share")
    if tc.counterpart == "swap":  # appended rows: validation keeps drawing from `pool`
        train_pool, partner = with_role_swaps(task, pool, partner)
    threads = torch.get_num_threads()
    result = siit.train(pair, train_pool.to(device), vb.to(device), vs.to(device), tc, progress, partner)
    weights = Weights(cfg, {k: t.detach().cpu().clone().contiguous() for k, t in result.weights.params.items()})
    figures = validation(task, weights, tc.seed, pool)
    missed = passes(figures)
    root = Path(directory) if directory else ground_truth_dir()
    out = root / "trained" / ("rejected" if missed else "")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{name}.safetensors.tmp"  # written whole, then renamed: an interrupted write leaves no model
    save_file(weights.params, str(tmp))
    os.replace(tmp, out / f"{name}.safetensors")
    card = {
        "task": name, "base_task": base, "config": cfg.to_dict(), "train": tc.to_dict(),
        "command": command(base, tc, threads),
        "correspondence": pair.corr.nodes, "training_inputs": int(train_pool.shape[0]),
        "steps": result.steps, "stopped_early": result.stopped_early, "seconds": round(result.seconds, 1),
        "torch": torch.__version__, "threads": threads, "platform": sys.platform, "cpu": cpu_name(), "device": str(device),
        "validation": _round(figures), "thresholds": {k: list(v) for k, v in SHIP_THRESHOLDS.items()},
        "shipped": not missed, "missed": missed, "history": _round(result.history),
        "written": time.strftime("%Y-%m-%d"),
    }
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(card, indent=1) + "\n")
    os.replace(tmp, out / f"{name}.json")  # the card last: a model is registered only once it has one
    if not missed:
        save_ground_truth(GroundTruth(
            task=name, variant=VARIANT, graph=name, edges=circuit_edges(task),
            source=f"SIIT correspondence of {base}'s compiled circuit (harness.programs.siit; docs/trained.md)",
            description=(f"The edges of {base}'s structural ground truth: SIIT put each of its heads and MLPs "
                         f"({len(pair.corr.nodes)} nodes) at the same place in this model, so the names are unchanged.")),
            root)
    return card


def cards(directory=None) -> list:
    """Every shipped model's card (the `trained/` folder's JSON files), by name."""
    d = Path(directory) / "trained" if directory else trained_dir()
    return [json.loads(p.read_text()) for p in sorted(d.glob(f"{PREFIX}*.json"))] if d.is_dir() else []


def load_trained(name: str, directory=None) -> Weights:
    """A shipped model's weights (float32), checked against its card's architecture."""
    from safetensors.torch import load_file

    d = Path(directory) / "trained" if directory else trained_dir()
    path = d / f"{name}.safetensors"
    card_path = d / f"{name}.json"
    if not path.exists() or not card_path.exists():
        raise FileNotFoundError(f"trained model {name}: {path} or its card is missing; reinstall circuit-bench "
                                f"or retrain it with `circuit-bench train-siit --task {name.removeprefix(PREFIX)}`")
    card = json.loads(card_path.read_text())
    w = Weights(ModelConfig(**card["config"]), load_file(str(path)),
                {"source": "SIIT", "base_task": card["base_task"], "card": str(card_path)})
    w.validate()
    return w


class TrainedTask(TracrTask):
    """A shipped SIIT model (module docstring): the compiled task `base`'s data and metric, this
    model's weights and its correspondence ground truth."""

    base: str = ""
    card: dict = {}
    in_default_run = False  # `run --preset trained` runs them beside their compiled programs

    def __init__(self):
        super().__init__()
        self._base = None

    def base_task(self):
        if self._base is None:
            self._base = base_task(self.base)
        return self._base

    def tracr(self):  # the high-level model: encodings and structural facts come from it
        return self.base_task().tracr()

    def loading_line(self) -> str:
        return f"loading the SIIT-trained model and {self.base}'s compiled program and data"

    def load_model(self, device="cpu", dtype=torch.float32, weights_dir=None):
        return load_trained(self.name).to(device, dtype)

    def data(self, split="validation", seed=0, ablation="resample"):
        return self.base_task().data(split, seed, ablation)


def register_trained(directory=None) -> list:
    """Register a TrainedTask for every shipped card; returns their names."""
    names = []
    for card in cards(directory):
        if not card.get("shipped"):
            continue
        v = card["validation"]
        cls = type(f"Trained_{card['task']}".replace("-", "_").replace(":", "_").replace(".", "_"), (TrainedTask,), {
            "__doc__": f"{card['base_task']}'s compiled circuit taught to an ordinary transformer by SIIT "
                       f"(ground_truth/trained/{card['task']}.json).",
            "name": card["task"], "model": card["task"], "base": card["base_task"], "card": card,
            "description": (f"SIIT-trained {card['base_task']}: {card['config']['n_layers']} layers, "
                            f"{card['config']['n_heads']} heads, d_model {card['config']['d_model']}; accuracy "
                            f"{v['accuracy']:.3f}, IIA {v['iia']:.3f}, strict {v['strict']:.3f}"),
        })
        register_task(cls)
        names.append(card["task"])
    return names


register_trained()
