"""The `circuit-bench` command: parse, look up registries, call, print. No logic of its own."""
from __future__ import annotations

import argparse
import json
import sys


def _fail(msg: str, code: int = 2):
    print(f"circuit-bench: {' '.join(str(msg).split())}", file=sys.stderr)
    sys.exit(code)


def warning_line(message, *_a, **_k) -> str:
    """A warning as the command shows it: one line, no source location."""
    return f"circuit-bench: warning: {' '.join(str(message).split())}\n"


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (and the way to the help) instead of
    the usage block."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class _Words(argparse.Action):
    """A list option that takes names separated by spaces or commas (`--tasks a,b c`), checked
    against `valid` when given, with argparse's own message."""

    def __init__(self, option_strings, dest, valid=None, **kw):
        kw.setdefault("nargs", "+")
        self.valid = tuple(valid) if valid else None
        if self.valid and "metavar" not in kw:
            kw["metavar"] = "{" + ",".join(self.valid) + "}"
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        words = [w for v in values for w in v.split(",") if w.strip()]
        if not words:
            parser.error(f"argument {option_string}: expected at least one name")
        bad = [w for w in words if self.valid and w not in self.valid]
        if bad:
            parser.error(f"argument {option_string}: invalid choice: {bad[0]!r} (choose from {', '.join(map(repr, self.valid))})")
        setattr(namespace, self.dest, words)


def _int_range(lo: int, hi: int | None = None, what: str = ""):
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range; {what or f'use an integer of at least {lo}'}")
        return v
    return conv


def _float_range(lo: float, strict: bool = False):
    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (v > lo if strict else v >= lo) or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"{v} is out of range; use a finite number {'above' if strict else 'of at least'} {lo}")
        return v
    return conv


def _bootstrap(text: str) -> int:
    from harness.eval.bootstrap import MIN_RESAMPLES

    v = _int_range(0)(text)
    if 0 < v < MIN_RESAMPLES:
        raise argparse.ArgumentTypeError(f"{v} resamples give no 95% interval; use 0 (off) or at least {MIN_RESAMPLES}")
    return v


def _device_name(text: str) -> str:
    """run's --device: checked here for its form, and for this machine only when units run here
    (a sweep's workers resolve it: `cmd_run`)."""
    from harness.core.device import device_name

    try:
        return device_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _device(text: str) -> str:
    from harness.core.device import resolve_device

    try:
        resolve_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


SEED_MAX = 2**31 - 1  # every generator seeded from it (numpy, torch, random; offsets of up to 10,019) accepts it
_seed = _int_range(0, SEED_MAX, f"use an integer from 0 to {SEED_MAX}")
_count = _int_range(1)


def _writable_folder(path: str, option: str = "--out") -> None:
    """A one-line error, before any work, when `path` cannot be the output folder."""
    import os
    from pathlib import Path

    if not path.strip():
        _fail(f"{option} is empty; name a folder, e.g. {option} out")
    p = Path(path)
    if p.exists() and not p.is_dir():
        _fail(f"{option} {path} is a file, not a folder; name a folder")
    up = p
    while not up.exists():
        up = up.parent
    if not up.is_dir():
        _fail(f"{option} {path} is under {up}, which is a file; name a folder")
    if not os.access(up, os.W_OK | os.X_OK):
        _fail(f"{option} {path}: no permission to write in {up}; choose a folder you can write to")
    try:
        p.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as e:
        _fail(f"{option} {path} cannot be written ({e.strerror or type(e).__name__}); choose another folder")


def _existing_folder(path, option: str) -> None:
    from pathlib import Path

    if path is not None and not Path(path).is_dir():
        _fail(f"{option} {path} is not a folder" + ("" if Path(path).exists() else " (it does not exist)"))


def _check_names(kind: str, given, valid) -> list:
    bad = [g for g in given if g not in valid]
    if bad:
        _fail(f"unknown {kind} {', '.join(map(repr, bad))}; valid {kind}s: {', '.join(valid)}")
    return list(given)


def cmd_run(args) -> int:
    import logging
    import warnings

    from harness.report import render as report
    from harness.methods import all_methods
    from harness.run.runner import RunConfig, jobs_for, offline_tasks, run
    from harness.tasks import TASKS, get_task

    programs = []
    if args.program:  # programs users bring: compiled and registered as tasks program:<NAME>
        from harness.programs.user_program import ProgramError
        from harness.tasks.program_task import register_programs

        try:
            programs = register_programs(args.program)
        except ProgramError as e:
            _fail(str(e))
    if args.preset:  # a named set of tasks, methods and options; the command line overrides each
        from harness.run.presets import get_preset

        preset = get_preset(args.preset)
        args.tasks = args.tasks or list(preset.tasks)
        args.methods = args.methods or list(preset.methods) or None
        opts = preset.options
        args.controls = args.controls or opts.get("controls")
        args.bootstrap = args.bootstrap if args.bootstrap is not None else opts.get("bootstrap")
        args.faithfulness = args.faithfulness if args.faithfulness is not None else opts.get("faithfulness")
        args.ablation = args.ablation or list(opts.get("ablations", ()))
    args.bootstrap = 1000 if args.bootstrap is None else args.bootstrap
    args.ablation = args.ablation or ["resample", "zero"]
    args.faithfulness = True if args.faithfulness is None else args.faithfulness
    suite = [t for t in args.tasks or [] if t.startswith("suite:") and t not in TASKS]
    if suite:  # the generated suite (harness.programs.suite): compiled and registered when asked for
        from harness.tasks.suite_tasks import register_suite
        from harness.programs.user_program import ProgramError

        try:
            register_suite(suite)
        except ProgramError as e:
            _fail(str(e))
    if args.model:  # tasks that run on any causal LM, on the model the user studies (harness.tasks.on_model)
        from harness.tasks.on_model import ANY_LM_TASKS, register_on_model

        try:
            args.tasks = [t if "@" in t else register_on_model(t, args.model) for t in (args.tasks or ANY_LM_TASKS)]
        except ValueError as e:
            _fail(f"--model {args.model}: {e}")
    for t in args.tasks or []:
        if "@" in t and t not in TASKS:  # <task>@<model> named directly
            from harness.tasks.on_model import resolve

            try:
                resolve(t)
            except ValueError as e:
                _fail(str(e))
    tasks = _check_names("task", args.tasks, list(TASKS)) if args.tasks else ([] if programs else offline_tasks())
    tasks += [t for t in programs if t not in tasks]
    _existing_folder(args.weights_dir, "--weights-dir")
    methods = _check_names("method", args.methods, list(all_methods())) if args.methods else list(all_methods())
    if args.variants:
        known = {v for m in methods for v in all_methods()[m].variants}
        _check_names("variant", args.variants, sorted(known))
    cfg = RunConfig(tasks=tasks, methods=methods, variants=args.variants or [], out=args.out, seed=args.seed,
                    device=args.device, split=args.split, ablations=tuple(args.ablation),
                    position_scramble=not args.no_position_scramble, dtype=args.dtype, fresh=args.fresh,
                    weights_dir=args.weights_dir, progress=not (args.no_progress or args.quiet),
                    bootstrap=args.bootstrap, methods_explicit=bool(args.methods),
                    faithfulness=args.faithfulness, bootstrap_reruns=args.bootstrap_reruns,
                    threads=args.threads, metric=args.metric,
                    controls=tuple(args.controls) if args.controls else None, reset_seeds=args.reset_seeds,
                    chunk=args.chunk, per_position=args.per_position)
    if args.metric:
        from harness.run.runner import check_metric

        for t in tasks:
            try:
                check_metric(get_task(t), args.metric)
            except ValueError as e:
                _fail(f"{e} (run those tasks without --metric)")
    from harness.core.ground_truth import GroundTruthError

    for t in tasks:  # a task whose circuit is stored but whose files are missing fails before any run
        try:
            get_task(t).ground_truth_paths()
        except GroundTruthError as e:
            _fail(str(e))
    if not jobs_for(cfg, log=lambda *a: None):
        _fail(f"nothing to run: no variant of {', '.join(methods)} runs under --ablation {' '.join(args.ablation)}"
              + (f" with --variants {' '.join(args.variants)}" if args.variants else "") + " (see `circuit-bench list`)")
    if args.variants and args.methods:
        for m in methods:
            if not set(args.variants) & set(all_methods()[m].variants):
                warnings.warn(f"--variants names no variant of {m}, so {m} does not run (its variants: "
                              f"{', '.join(all_methods()[m].variants)})")
    _writable_folder(args.out)
    executor = _executor(args)
    try:
        if executor is None:
            store = run(cfg, log=logging.getLogger("harness.run").info)
        else:
            from pathlib import Path

            from harness.run.sweep import run_sweep
            from harness.run.units import Setup

            setup = Setup(plugins=tuple(str(Path(p).resolve()) if p.endswith(".py") else p for p in args.plugin),
                          programs=tuple(str(Path(p).resolve()) for p in args.program),
                          suite=tuple(t for t in tasks if t.startswith("suite:")))  # registered here, not there
            store = run_sweep(cfg, executor, setup, log=logging.getLogger("harness.run").info)
    except ValueError as e:
        _fail(str(e))
    records = store.records()
    path = report.render(args.out)
    n_ok = sum(r.get("status") == "ok" for r in records)
    n_failed = sum(r.get("status") == "error" for r in records)
    gt_bad = sorted({(r["task"], k) for r in records for k in (r.get("ground_truth_problems") or {})})
    print(f"wrote {store.root / 'results.csv'}, {path} and {path.with_suffix('.html')} ({n_ok} runs ok"
          + (f", {n_failed} failed: see the error column of results.csv" if n_failed else "")
          + (f", {len(gt_bad)} ground-truth file(s) left out: see the report" if gt_bad else "") + ")")
    if records and n_ok == 0:
        return 2
    return 1 if n_failed or gt_bad else 0


RAY_OPTIONS = ("ray_address",)
SLURM_OPTIONS = ("slurm_partition", "slurm_time", "slurm_units_per_job", "slurm_parallelism", "slurm_cluster",
                 "slurm_folder")


def _executor(args):
    """The executor `run --executor` names (None: local), its options checked; an option of
    another executor is refused, so a sweep never silently runs where it was not meant to."""
    owners = {**dict.fromkeys(RAY_OPTIONS, "ray"), **dict.fromkeys(SLURM_OPTIONS, "slurm"),
              **dict.fromkeys(("unit_cpus", "unit_gpus", "retries"), "ray or slurm")}
    for name, owner in owners.items():
        if getattr(args, name) is not None and args.executor not in owner.split(" or "):
            _fail(f"--{name.replace('_', '-')} applies to --executor {owner}, not {args.executor}: drop it or choose "
                  "that executor (docs/cluster.md)")
    if args.executor == "local":
        from harness.core.device import resolve_device

        try:
            resolve_device(args.device)  # units run here: this machine must have the device
        except ValueError as e:
            _fail(str(e))
        return None
    if args.unit_gpus and args.device == "cpu":
        _fail(f"--unit-gpus {args.unit_gpus:g} gives each unit a GPU that --device cpu leaves unused: add --device cuda "
              "(or auto)")
    from pathlib import Path

    from harness.run.executors import RayExecutor, SlurmExecutor

    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731  (the rest: the executor's defaults)
    if args.executor == "ray":
        return RayExecutor(**given(address=args.ray_address, unit_cpus=args.unit_cpus, unit_gpus=args.unit_gpus,
                                   retries=args.retries))
    whole = {o: v for o, v in (("--unit-cpus", args.unit_cpus), ("--unit-gpus", args.unit_gpus))
             if v is not None and v != int(v)}
    if whole:
        o, v = next(iter(whole.items()))
        _fail(f"{o} {v:g}: SLURM gives a job whole CPUs and GPUs; use a whole number (fractions share one under "
              "--executor ray)")
    return SlurmExecutor(**given(folder=args.slurm_folder or str(Path(args.out) / "slurm-jobs"),
                                 cluster=args.slurm_cluster, partition=args.slurm_partition, time_min=args.slurm_time,
                                 cpus=None if args.unit_cpus is None else int(args.unit_cpus),
                                 gpus=None if args.unit_gpus is None else int(args.unit_gpus),
                                 units_per_job=args.slurm_units_per_job, parallelism=args.slurm_parallelism,
                                 retries=args.retries))


def cmd_list(args) -> int:
    from harness.methods import all_methods
    from harness.tasks import TASKS

    if args.suite:  # the generated suite's programs (compiled only when run)
        from harness.programs.suite import catalogue

        rows = catalogue()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print(f"Suite programs ({len(rows)}; run one with --tasks NAME, all with --preset suite; docs/suite.md):")
        for r in rows:
            print(f"  {r['task']:<34} {r['source']:<16} {r['vocab']} tokens x {r['max_seq_len']}"
                  + (" causal" if r["causal"] else "") + f"  {r['program']}")
        return 0
    tasks = [cls().summary() for cls in TASKS.values()]
    methods = [
        {"name": m.name, "description": m.description, "output": m.output,
         "variants": [{"name": v, "description": d, "default": v in m.default_variants,
                       "per_position": m.supports_per_position(v)} for v, (_, d) in m.variants.items()],
         **({"grid": {"rows": m.grid[0], "columns": m.grid[1]}} if m.grid else {})}
        for m in all_methods().values()
    ]
    if args.json:
        print(json.dumps({"tasks": tasks, "methods": methods}, indent=1))
        return 0
    print("Tasks:")
    for t in tasks:
        gt = ", ".join(f"{k} {v}" for k, v in t["n_ground_truth_edges"].items()) or "none"
        print(f"  {t['name']:<20} model={t['model']:<18} offline={str(t['offline']).lower():<5} ground truth edges: {gt}")
        print(f"  {'':<20} {t['description']}")
        for k, why in t["ground_truth_problems"].items():
            print(f"  {'':<20} ground truth {k} cannot be used: {why}")
    print("Methods:")
    for m in methods:
        print(f"  {m['name']:<16} {m['description']} [{m['output']}]")
        if "grid" in m:
            print("\n".join(_grid_lines(m)))
            continue
        for v in m["variants"]:
            print(f"    {'*' if v['default'] else ' '} {v['name']:<34} {v['description']}")
    print("(* = run by default)")
    return 0


def _grid_lines(m: dict) -> list:
    """A method whose variants are row/column, as a grid of marks, each name described once."""
    rows, cols = m["grid"]["rows"], m["grid"]["columns"]
    default = {v["name"] for v in m["variants"] if v["default"]}
    w = max(map(len, rows)) + 2
    out = ["    variants are ROW/COLUMN (* run by default, . when named):",
           f"    {'':<{w}}" + "  ".join(cols),
           *((f"    {r:<{w}}" + "  ".join(f"{'*' if f'{r}/{c}' in default else '.':^{len(c)}}" for c in cols)).rstrip()
             for r in rows)]
    width = max(map(len, [*rows, *cols])) + 2
    out += [f"    {n:<{width}} {d}" for n, d in rows.items()]
    out += [f"    {'/' + n:<{width}} {d}" for n, d in cols.items()]
    return out


def cmd_heads(args) -> int:
    """Layer x head maps of weight-gradient norms and direct effects for one task."""
    from pathlib import Path

    from harness.core.engine import Engine
    from harness.core.loading import MissingWeightsError
    from harness.core.weights import random_weights
    from harness.eval.head_maps import head_maps
    from harness.methods.targets import TARGETS
    from harness.report.head_maps import plot_head_maps
    from harness.tasks import TASKS, get_task

    _check_names("task", [args.task], list(TASKS))
    _check_names("target", [args.target], list(TARGETS))
    _existing_folder(args.weights_dir, "--weights-dir")
    _writable_folder(args.out)
    task = get_task(args.task)
    try:
        if args.random_init:
            from harness.core.architectures import ARCHITECTURES

            weights = random_weights(ARCHITECTURES[task.model], seed=args.seed)
        else:
            weights = task.load_model("cpu", weights_dir=args.weights_dir)
        if args.weights_dir:
            task.weights_dir = args.weights_dir
        data = task.data()
    except MissingWeightsError as e:
        _fail(f"{e}\n" + ("(--random-init replaces the weights, not the tokenizer the prompts need)" if args.random_init
                            else "(or use --random-init to draw the maps on random weights)"))
    hm = head_maps(Engine(weights), data, task, args.target)
    out = Path(args.out)
    png = plot_head_maps(hm, out / f"heads_{task.name}.png", f"{task.name} on {weights.cfg.name}" + (" (random init)" if args.random_init else ""))
    hm.frame().to_csv(out / f"heads_{task.name}.csv", index=False)
    print(f"wrote {png} and {out / f'heads_{task.name}.csv'}")
    return 0


def cmd_graph(args) -> int:
    from harness.core.architectures import ARCHITECTURES
    from harness.core.graph import Graph
    from harness.core.loading_hf import MODELS, family_architecture

    if args.model not in ARCHITECTURES and args.model not in MODELS:
        _fail(f"unknown model {args.model!r}; valid models: {', '.join([*ARCHITECTURES, *MODELS])}")
    if args.model in MODELS:  # the published config: the graph needs nothing else
        cfg = family_architecture(args.model)
    elif args.random_init:
        cfg = ARCHITECTURES[args.model]
    elif args.model.startswith("tracr-"):  # compiled here, nothing to load
        from harness.programs.tracr_models import load_tracr

        cfg = load_tracr(args.model).weights.cfg
    else:
        from harness.core.loading import MissingWeightsError, load_weights

        try:
            cfg = load_weights(args.model, weights_dir=args.weights_dir).cfg
        except MissingWeightsError as e:
            _fail(f"{e}\n(or use --random-init: the graph depends only on the architecture)")
        except KeyError as e:
            _fail(f"{e.args[0] if e.args else e}; use --random-init for {args.model}")
    g = Graph(cfg)
    out = g.summary()
    if args.names:
        out["node_names"] = g.all_nodes
        out["edge_names"] = g.edge_names
    print(json.dumps(out, indent=1))
    return 0


def cmd_report(args) -> int:
    from harness.report import render as report

    try:
        md = report.render(args.dir)
        print(f"wrote {md} and {md.with_suffix('.html')}")
    except report.NothingToReport as e:
        _fail(str(e))
    return 0


def cmd_draw(args) -> int:
    from harness.report.circuits import INSTALL_DOT, WORDS, CannotDraw, draw_from_run

    try:
        d = draw_from_run(args.dir, args.task, args.method, args.variant, args.reference, args.ground_truth, args.k)
    except CannotDraw as e:
        _fail(str(e))
    counts = ", ".join(f"{WORDS[k]} {v}" for k, v in d.counts.items())
    if d.svg is None:
        print(f"wrote {d.dot_path} ({counts}); {INSTALL_DOT}")
    else:
        print(f"wrote {d.png_path} and {d.png_path.with_suffix('.svg')} ({counts})")
    return 0


def cmd_compare(args) -> int:
    from harness.report.compare import compare
    from harness.report.tables import TableError

    try:
        c = compare(args.dir, args.baseline, args.tolerance, args.time_factor, strict=args.strict)
    except TableError as e:
        _fail(str(e))
    print("\n".join(c.lines()))
    return 0 if c.ok else 1


def cmd_suite_seeds(args) -> int:
    """Print seeds' generated programs and/or re-derive the grammar's first N kept seeds (exit 1
    when they differ from the shipped GENERATED_SEEDS)."""
    import time
    from collections import Counter

    from harness.programs.grammar import GENERATED_SEEDS, generate, reason_of
    from harness.tasks.suite_tasks import select

    for s in args.show or []:
        p = generate(s)
        print(f"# {p.name} (depth {p.depth}, vocab {p.vocab})\n{p.text}\n")
    if args.select:
        t0 = time.perf_counter()
        kept, rejected = select(args.select, args.start, log=lambda line: print(line, flush=True))
        print(f"\nkept {len(kept)} seeds in {time.perf_counter() - t0:.0f}s: {tuple(kept)}")
        counts = Counter(reason_of(m) for m in rejected.values())
        print(f"rejected {len(rejected)}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
        if tuple(kept[: len(GENERATED_SEEDS)]) != GENERATED_SEEDS[: len(kept)]:
            _fail("the kept seeds differ from harness.programs.grammar.GENERATED_SEEDS", code=1)
    return 0


def train_config(args):
    """The TrainConfig of parsed `train-siit` arguments: each option given is passed on (the names in
    harness.tasks.trained_tasks.COMMAND_OPTIONS, the card's command's), the rest keep TrainConfig's defaults."""
    from harness.programs.siit import TrainConfig
    from harness.tasks.trained_tasks import COMMAND_OPTIONS

    if args.strict_focus is not None:
        if args.strict_nodes != "one":
            _fail("--strict-focus draws one strict node per step: drop --strict-nodes or pass --strict-nodes one")
        if args.strict_focus > 1:
            _fail(f"--strict-focus {args.strict_focus:g} is a share of the steps: use a number from 0 to 1")
    if args.paired_share is not None and args.paired_share > 1:
        _fail(f"--paired-share {args.paired_share:g} is a share of each batch: use a number from 0 to 1")
    if args.paired_strict and not args.paired_share:
        _fail("--paired-strict says which losses --paired-share's pairs reach: add --paired-share P")
    if args.counterpart is not None and not args.paired_share:
        _fail("--counterpart says what --paired-share pairs a prompt with: add --paired-share P")
    if args.label_smoothing is not None and args.label_smoothing >= 1:
        _fail(f"--label-smoothing {args.label_smoothing:g} leaves no label: use a number from 0 to below 1")
    kw = {"seed": args.seed}
    for name, _ in COMMAND_OPTIONS:
        v = getattr(args, name)
        if v is not None and v is not False:  # given (a flag: set); otherwise TrainConfig's default
            kw[name] = v
    return TrainConfig(**kw)


def cmd_train_siit(args) -> int:
    """Train SIIT models of compiled tasks (harness.tasks.trained_tasks.train), one after another."""
    import torch
    from tqdm import tqdm

    from harness.core.device import resolve_device
    from harness.tasks import TASKS
    from harness.tasks.trained_tasks import base_task, train, training_pool

    if args.threads:
        torch.set_num_threads(args.threads)
    tc = train_config(args)
    for t in args.task:
        if not t.startswith("suite:"):
            _check_names("task", [t], list(TASKS))
        try:
            task = base_task(t)
        except (ValueError, KeyError) as e:
            _fail(str(e).strip('"'))
        if tc.paired_share and not bool((training_pool(task, seed=tc.seed)[1] >= 0).any()):
            _fail(f"--paired-share: {t} trains on no (prompt, corruption) pairs, only on sequences over its "
                  "vocabulary; drop the option for it")
        if tc.counterpart == "swap" and not hasattr(task, "role_swap"):
            _fail(f"--counterpart swap: {t} defines no role swap (tracr-ioi does); drop the option for it")
    failed = 0
    for t in args.task:
        with tqdm(total=tc.max_steps, desc=t, unit="step", disable=args.quiet) as bar:
            def progress(step, h, bar=bar):
                bar.update(step - bar.n)
                bar.set_postfix(acc=f"{h['accuracy']:.3f}", iia=f"{h['iia']:.3f}", strict=f"{h['strict']:.3f}",
                                effect=f"{h['strict_effect_max']:.3f}")
            card = train(t, tc, args.out, progress, device=resolve_device(args.device))
        v = card["validation"]
        where = "shipped" if card["shipped"] else "REJECTED (written under trained/rejected/): " + "; ".join(card["missed"])
        print(f"{card['task']}: {card['steps']} steps, {card['seconds']:.0f} s; accuracy {v['accuracy']:.4f}, IIA "
              f"{v['iia']:.4f}, strict {v['strict']:.4f}, largest non-circuit effect {v['strict_effect_max']:.4f}: {where}")
        failed += not card["shipped"]
    return 1 if failed else 0


def cmd_ground_truth(args) -> int:
    from harness.programs.structural_gt import write_all
    from harness.tasks import get_task

    for p in write_all(args.dir, inputs=lambda t: get_task(t).ground_truth_inputs()):
        print(p)
    return 0


def cmd_bench(args) -> int:
    from harness.bench.suite import BenchConfig, run_bench
    from harness.core.architectures import ARCHITECTURES
    from harness.report import render as report
    from harness.report.timing_text import targets_text_for

    models = _check_names("model", args.models, list(ARCHITECTURES)) if args.models else None
    _writable_folder(args.out)
    opts = dict(models=models, device=args.device, dtype=args.dtype, batches=args.batch, seq_len=args.seq_len,
                repeats=args.repeats, heavy_repeats=args.heavy_repeats, warmup=args.warmup, ig_steps=args.ig_steps,
                single_edges=args.single_edges, acdc_threshold=args.acdc_threshold, budget_s=args.budget_s,
                max_patched=args.max_patched, threads=args.threads, methods=args.methods,
                progress=not (args.no_progress or args.quiet), fresh=args.fresh)
    if args.quick:
        cfg = BenchConfig.quick(**opts)
    else:
        cfg = BenchConfig(**{k: v for k, v in opts.items() if v is not None})
    if cfg.budget_s is not None and cfg.budget_s <= 0:
        cfg.budget_s = None
    try:
        path = run_bench(cfg, args.out)
    except (ValueError, KeyError) as e:
        _fail(str(e))
    rep = report.render(args.out)
    print(targets_text_for(path.parent))
    print(f"wrote {path}, {rep} and {rep.with_suffix('.html')}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("circuit-bench")
    except PackageNotFoundError:  # run from a checkout that is not installed
        import harness

        return harness.__version__


def build_parser() -> argparse.ArgumentParser:
    from harness.run.presets import PRESETS

    p = _Parser(prog="circuit-bench", description="Benchmark gradient-based circuit discovery.")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers methods or tasks (repeatable)")
    p.add_argument("--version", action="version", version=f"circuit-bench {_version()}")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and each command's result line")
    talk.add_argument("-v", "--verbose", action="store_true", help="also a line per finished run, with its time")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run methods on tasks, score them against ground truth, write results and a report")
    r.add_argument("--tasks", action=_Words, help="task names (default: every task that runs offline; suite:<name> "
                                                  "compiles a program of the generated suite, docs/suite.md)")
    r.add_argument("--model", default=None, metavar="MODEL",
                   help="run tasks that work on any causal LM (ioi, greaterthan, seed-pair, repeated-tokens; default: all) on this "
                        "model with its own tokenizer: llama-3.2-1b, llama-3.1-8b, mistral-7b, qwen2.5-0.5b, pythia-70m, "
                        "gemma-2-2b (weights from the hub cache or --weights-dir; no ground truth: scores and "
                        "faithfulness, docs/tasks.md#tasks-on-other-models)")
    r.add_argument("--program", action="append", default=[], metavar="FILE",
                   help="a .py file defining program() (a RASP expression), VOCAB and MAX_SEQ_LEN: compiled with "
                        "tracr and run as task program:NAME, alone or besides --tasks (repeatable; "
                        "docs/tasks.md#programs-you-bring)")
    r.add_argument("--methods", action=_Words, help="method names (default: all)")
    r.add_argument("--variants", action=_Words, help="variant names (default: each method's default variants)")
    r.add_argument("--out", default="out", help="output directory (default: out)")
    r.add_argument("--seed", type=_seed, default=0)
    r.add_argument("--device", type=_device_name, default="cpu",
                   help="cpu, cuda, cuda:N or auto (default: cpu); with --executor ray/slurm, the workers' device")
    r.add_argument("--split", default="validation", choices=["validation", "test"])
    r.add_argument("--ablation", action=_Words, valid=["resample", "zero"],
                   help="references to run, each result under one (default: both; a variant runs under those it accepts)")
    r.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="model dtype (default: each task's own, float64 for tracr and float32 for pretrained models)")
    r.add_argument("--metric", default=None,
                   help="task metric to run with, e.g. kl (ACDC's Table 2 KL rows); default: each task's ACDC loss metric")
    r.add_argument("--no-position-scramble", action="store_true",
                   help="tracr resample runs without ACDC's permutation of the corrupted run's positional embeddings")
    r.add_argument("--weights-dir", help="directory holding pretrained weights (see README)")
    r.add_argument("--fresh", action="store_true", help="discard finished results in --out and start over")
    r.add_argument("--bootstrap", type=_bootstrap, default=None,
                   help="resamples of the examples for 95%% AUC intervals (at least 1000; 0: off; default 1000)")
    r.add_argument("--bootstrap-reruns", type=_int_range(0), default=0,
                   help="re-runs allowed for methods that must re-run per resample, e.g. ACDC; an interval needs "
                        "--bootstrap of them, so fewer gives none (default 0)")
    r.add_argument("--threads", type=_count, help="torch CPU threads (default: 1 for small models, else torch's choice)")
    r.add_argument("--chunk", type=_count, help="examples per pass of the gradient methods (default: as "
                                               "many as keep a traced run within 1 GiB; results are the same)")
    r.add_argument("--controls", action=_Words, valid=["trained", "reset"],
                   help="trained: the task's model; reset: each method on --reset-seeds reset networks (ACDC's reset "
                        "procedure; tracr: random models of the same shape). Default: trained, plus reset on tracr "
                        "tasks for every method that runs the model but ACDC")
    r.add_argument("--reset-seeds", type=_int_range(2, 1000, "use an integer from 2 to 1000"), default=5,
                   help="reset networks per reset control; their spread is its interval (default 5)")
    r.add_argument("--faithfulness", action=argparse.BooleanOptionalAction, default=None,
                   help="CPR/CMD of the top-k circuits (default: on; --no-faithfulness skips them)")
    r.add_argument("--preset", choices=PRESETS,
                   help="suite-quick: 14 suite circuits and the fast methods, under 10 minutes on 2 cores; suite: every "
                        "suite circuit and method (docs/suite.md); trained: the SIIT-trained models beside their "
                        "compiled programs (docs/trained.md); --tasks, --methods and options given override it")
    r.add_argument("--per-position", action="store_true",
                   help="also keep every token position's share of each gradient ranking (one more run per variant "
                        "that splits so), written to position_scores.parquet; the rankings are unchanged")
    r.add_argument("--no-progress", action="store_true")
    ex = r.add_argument_group("where units run (docs/cluster.md)")
    ex.add_argument("--executor", choices=["local", "ray", "slurm"], default="local",
                    help="local: this process (default); ray: each unit a Ray task; slurm: units in SLURM jobs "
                         "through submitit. Results are written here either way")
    ex.add_argument("--ray-address", help="the Ray cluster's HOST:PORT, ray://HOST:PORT or auto (default: start "
                                          "one on this machine)")
    ex.add_argument("--unit-cpus", type=_float_range(0, strict=True),
                    help="CPUs per unit (ray) or per job (slurm); default 1")
    ex.add_argument("--unit-gpus", type=_float_range(0),
                    help="GPUs per unit (ray; fractions share one) or per job (slurm); default 0")
    ex.add_argument("--retries", type=_int_range(0), help="tries again after a worker or job is lost (default 2)")
    ex.add_argument("--slurm-partition", help="SLURM partition (default: the cluster's)")
    ex.add_argument("--slurm-time", type=_count, help="minutes per SLURM job (default 60)")
    ex.add_argument("--slurm-units-per-job", type=_count,
                    help="units per SLURM job, all of one task, which the job loads once (default 16)")
    ex.add_argument("--slurm-parallelism", type=_count, help="array jobs running at once (default: SLURM's)")
    ex.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"],
                    help="slurm (default); local or debug: submitit's executors on this machine, to try a sweep")
    ex.add_argument("--slurm-folder", help="submitit's job files, on a folder the nodes share (default OUT/slurm-jobs)")
    r.set_defaults(fn=cmd_run)
    li = sub.add_parser("list", help="list tasks, methods and variants")
    li.add_argument("--json", action="store_true")
    li.add_argument("--suite", action="store_true", help="list the generated suite's programs (docs/suite.md)")
    li.set_defaults(fn=cmd_list)
    hd = sub.add_parser("heads", help="layer x head heatmaps of ||dL/dW_Q,K,V,O|| and direct effects (e.g. seed-pair, ioi)")
    hd.add_argument("--task", required=True)
    hd.add_argument("--target", default="logit-diff-mse", help="grad-wrong target loss (default: the seed's)")
    hd.add_argument("--weights-dir")
    hd.add_argument("--random-init", action="store_true", help="random weights of the task's architecture (offline)")
    hd.add_argument("--seed", type=_seed, default=0)
    hd.add_argument("--out", default="out")
    hd.set_defaults(fn=cmd_heads)
    g = sub.add_parser("graph", help="print a model's ACDC graph as JSON")
    g.add_argument("--model", required=True)
    g.add_argument("--random-init", action="store_true", help="use the real config with random weights (offline)")
    g.add_argument("--names", action="store_true", help="include node and edge names")
    g.add_argument("--weights-dir")
    g.set_defaults(fn=cmd_graph)
    rp = sub.add_parser("report", help="render DIR/report.md from a run's results")
    rp.add_argument("dir")
    rp.set_defaults(fn=cmd_report)
    dr = sub.add_parser("draw", help="draw a stored ranking's top-k edges against a ground truth (Graphviz)")
    dr.add_argument("dir", help="a run's --out folder")
    dr.add_argument("--task", required=True)
    dr.add_argument("--method", required=True)
    dr.add_argument("--variant", help="default: the method's best by edge AUC")
    dr.add_argument("--reference", help="resample or zero (default: resample where the method ran under it)")
    dr.add_argument("--ground-truth", help="default: acdc where the task has it, else its first")
    dr.add_argument("--k", type=int, help="edges to keep (default: the ground truth's size)")
    dr.set_defaults(fn=cmd_draw)
    cp = sub.add_parser("compare", help="exit 1 if DIR's results regressed against a baseline results.csv")
    cp.add_argument("dir")
    cp.add_argument("--baseline", required=True, help="a results.csv (or a directory holding one)")
    cp.add_argument("--tolerance", type=_float_range(0), default=0.02, help="allowed AUC drop (absolute, default 0.02)")
    cp.add_argument("--time-factor", type=_float_range(0, strict=True), default=1.5, help="allowed growth of a timing ratio (default 1.5x)")
    cp.add_argument("--strict", action="store_true", help="also fail when a baseline row is missing from DIR "
                                                        "(default: compare the rows both have, summarise the rest)")
    cp.set_defaults(fn=cmd_compare)
    ss = sub.add_parser("suite-seeds", help="print the seeded grammar's programs, or re-derive its shipped seeds "
                                            "(docs/suite.md#the-seeded-grammar)")
    ss.add_argument("--select", type=_count, metavar="N", help="re-derive the first N kept seeds (compiles each candidate)")
    ss.add_argument("--start", type=_seed, default=0, help="the first seed to try (default 0)")
    ss.add_argument("--show", type=_seed, nargs="*", metavar="SEED", help="print the programs of these seeds")
    ss.set_defaults(fn=cmd_suite_seeds)
    gt = sub.add_parser("ground-truth", help="derive structural ground truths of tracr programs into ground_truth/")
    gt.add_argument("--dir", default=None, help="output folder (default: the package's ground truths: the checkout's "
                                               "ground_truth/ in an editable install)")
    gt.set_defaults(fn=cmd_ground_truth)
    ts = sub.add_parser("train-siit", help="train an ordinary transformer to implement a compiled task's circuit "
                                           "(SIIT) and write it beside the shipped models (docs/trained.md)")
    ts.add_argument("--task", action=_Words, required=True, help="compiled tasks (tracr-reverse, suite:<name>, ...)")
    ts.add_argument("--seed", type=_seed, default=0, help="initialisation and pair-sampling seed (default 0)")
    ts.add_argument("--max-steps", type=_count, help="training steps at most (default: 3000; training stops earlier "
                                                     "once validation passes)")
    ts.add_argument("--strict-nodes", choices=["one", "subset", "all"], default="one",
                    help="non-circuit nodes resample-ablated per step by the strict loss: one (InterpBench's "
                         "'individual', default), each with probability 1/2, or all")
    ts.add_argument("--strict-weight", type=_float_range(0), help="the strict loss's weight (default 1; InterpBench: 0.4)")
    ts.add_argument("--strict-grad", action="store_true", help="the strict loss's gradient also reaches the ablated "
                    "node through its output on the source (InterpBench detaches it; docs/trained.md#training)")
    ts.add_argument("--strict-logits", type=_float_range(0), help="weight of the strict loss's logit term: the mean "
                    "squared change of the logits, less the shift every class shares, when the node is ablated "
                    "(default 0; docs/trained.md#training)")
    ts.add_argument("--step-per-loss", action="store_true", help="one optimiser step per loss, as InterpBench by "
                    "default (default: one step on their weighted sum)")
    ts.add_argument("--mixture-labels", action="store_true", help="also train on compiled outputs that average "
                    "several values, labelled by their largest entry (the rule trained-tracr-induction and "
                    "trained-gen-20-5x8 were trained with; default: one-hot outputs only; docs/trained.md#labels)")
    ts.add_argument("--blank-weight", type=_float_range(0), help="weight of a term that trains the output toward "
                    "uniform where the compiled output is blank, as on prompts where the program has no answer "
                    "(default 0; docs/trained.md#labels)")
    ts.add_argument("--average-weight", type=_float_range(0), help="weight of a term that trains the output's "
                    "softmax toward the compiled output where that averages several values (no label; default 0; "
                    "docs/trained.md#labels)")
    ts.add_argument("--centre-weight", type=_float_range(0), help="weight of a term on the squared mean of the "
                    "logits over classes, a shift softmax ignores and the L2 metric counts (default 0; "
                    "docs/trained.md#training)")
    ts.add_argument("--strict-focus", type=_float_range(0), help="share of steps whose strict node is drawn in "
                    "proportion to what ablating it has recently cost in training, not uniformly (default 0; "
                    "docs/trained.md#training)")
    ts.add_argument("--label-smoothing", type=_float_range(0), help="cross-entropy against (1 - e) the label + e "
                    "uniform: confidence past a finite margin stops paying (default 0; docs/trained.md#training)")
    ts.add_argument("--width-step", type=_count, help="the trained model's d_model is the compiled residual rounded up "
                    "past the next multiple of this (default 16; docs/trained.md#the-models)")
    ts.add_argument("--min-heads", type=_count, help="heads per layer of the trained model: at least this many, and "
                    "at least the compiled model's (default 4)")
    ts.add_argument("--paired-share", type=_float_range(0), help="share of each batch's pairs whose source is the "
                    "base prompt's own corruption or the reverse, the minimal pairs methods are scored on (default 0: "
                    "random pairs; docs/trained.md#training)")
    ts.add_argument("--paired-strict", action="store_true", help="with --paired-share: only the strict loss's sources "
                    "are so paired; the interchange and behaviour losses keep random pairs (docs/trained.md#training)")
    ts.add_argument("--iit-weight", type=_float_range(0), help="weight of the interchange-intervention loss "
                    "(default 1, InterpBench's; docs/trained.md#training)")
    ts.add_argument("--counterpart", choices=("corruption", "swap"), help="with --paired-share: pair a prompt with "
                    "its corruption (default) or its role swap, IOI's names exchanged, whose interchanges have answers "
                    "(docs/trained.md#training)")
    ts.add_argument("--lr", type=_float_range(0, strict=True), help="peak learning rate of the cosine schedule (default 3e-3; "
                    "docs/trained.md#training)")
    ts.add_argument("--threads", type=_count, help="torch CPU threads (the shipped models: 1)")
    ts.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu; validation "
                                                                    "always runs on the CPU in float64)")
    ts.add_argument("--out", default=None, help="folder for trained/ and the ground truths (default: the package's "
                                                "ground_truth/, the checkout's in an editable install)")
    ts.add_argument("--quiet", action="store_true", help="no progress bar")
    ts.set_defaults(fn=cmd_train_siit)
    b = sub.add_parser("bench", help="time every method against one forward+backward and activation patching; "
                                     "writes DIR/timing.csv and the report's speed section")
    b.add_argument("--models", action=_Words, help="architectures (default: all; --quick: tracr-xproportion)")
    b.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    b.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "float64"], help="default float32")
    b.add_argument("--out", default="reports/timing", help="output directory (default: reports/timing)")
    b.add_argument("--batch", type=_count, nargs="+", help="batch sizes (default: 8; --quick: 2)")
    b.add_argument("--seq-len", type=_count, help="sequence length, clipped to the model's context (default: 16)")
    b.add_argument("--quick", action="store_true", help="smallest run: one repeat, tiny samples (CI)")
    b.add_argument("--repeats", type=_count, help="measured runs per method (default: 3)")
    b.add_argument("--heavy-repeats", type=_count, help="measured runs per looping method: patching, ACDC (default: 1)")
    b.add_argument("--warmup", type=_int_range(0), help="warm-up runs per method (default: 1)")
    b.add_argument("--ig-steps", type=_count, help="EAP-IG steps m (default: 5)")
    b.add_argument("--single-edges", type=_count, help="edges sampled for one-edge-per-forward patching (default: 100)")
    b.add_argument("--acdc-threshold", type=_float_range(0), help="the one ACDC threshold timed (default: 1e-3)")
    b.add_argument("--budget-s", type=_float_range(0), help="seconds per looping measurement before it stops and extrapolates "
                                                   "(default: 120; 0: no limit)")
    b.add_argument("--max-patched", type=_count, help="patched forwards per looping measurement before it extrapolates")
    b.add_argument("--threads", type=_count, help="torch CPU threads (default: torch's)")
    b.add_argument("--methods", action=_Words, help="only these methods or method/variant keys (forward rows always run)")
    b.add_argument("--fresh", action="store_true", help="discard DIR's earlier timing rows (default: rows of other "
                                                         "models and sizes are kept, re-measured ones replaced)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    import logging
    import os
    import warnings

    from harness.core.allocator import keep_freed_memory
    from harness.methods.registry import load_entry_point_plugins, load_plugin

    keep_freed_memory()  # large CPU tensors reuse freed memory instead of page-faulting (CIRCUIT_BENCH_SYSTEM_MALLOC=1: off)
    shown = warnings.formatwarning
    warnings.formatwarning = warning_line
    try:
        load_entry_point_plugins()
        for spec in args.plugin:
            try:
                load_plugin(spec)
            except Exception as e:  # the plugin's own error, in one line
                _fail(f"cannot load plugin {spec!r}: {type(e).__name__}: {e}")
    except BaseException:
        warnings.formatwarning = shown
        raise
    logger = logging.getLogger("harness")  # what the runner says as it goes, on stdout; -q / -v set how much
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    logger.propagate = False
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped reading (`| head`): stop quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
    except OSError as e:  # a disk full, a folder removed under the run, a permission changed
        _fail(f"{e.strerror or type(e).__name__}" + (f": {e.filename}" if e.filename else "")
              + (" (finished results are kept; fix it and re-run the same command to resume)" if args.cmd == "run" else ""), 1)
    except Exception as e:
        if os.environ.get("CIRCUIT_BENCH_DEBUG"):
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (please report it; CIRCUIT_BENCH_DEBUG=1 shows the traceback)", 3)
    finally:
        warnings.formatwarning = shown
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


if __name__ == "__main__":
    sys.exit(main())
