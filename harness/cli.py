"""The `circuit-bench` command: parse, look up registries, call, print. No logic of its own."""
from __future__ import annotations

import argparse
import json
import sys


def _fail(msg: str, code: int = 2):
    print(f"circuit-bench: {msg}", file=sys.stderr)
    sys.exit(code)


def _check_names(kind: str, given, valid) -> list:
    bad = [g for g in given if g not in valid]
    if bad:
        _fail(f"unknown {kind} {', '.join(map(repr, bad))}; valid {kind}s: {', '.join(valid)}")
    return list(given)


def cmd_run(args) -> int:
    from . import report
    from .methods import all_methods
    from .runner import RunConfig, offline_tasks, run
    from .tasks import TASKS

    tasks = _check_names("task", args.tasks, list(TASKS)) if args.tasks else offline_tasks()
    methods = _check_names("method", args.methods, list(all_methods())) if args.methods else list(all_methods())
    if args.variants:
        known = {v for m in methods for v in all_methods()[m].variants}
        _check_names("variant", args.variants, sorted(known))
    cfg = RunConfig(tasks=tasks, methods=methods, variants=args.variants or [], out=args.out, seed=args.seed,
                    device=args.device, split=args.split, ablation=args.ablation, fresh=args.fresh,
                    weights_dir=args.weights_dir, progress=not args.no_progress,
                    bootstrap=args.bootstrap)
    try:
        store = run(cfg)
    except ValueError as e:
        _fail(str(e))
    path = report.render(args.out)
    df = store.frame()
    n_ok = int((df.drop_duplicates(["task", "method", "variant"])["status"] == "ok").sum()) if len(df) else 0
    print(f"wrote {store.root / 'results.csv'} and {path} ({n_ok} runs ok)")
    if len(df) and n_ok == 0:
        return 2
    return 0


def cmd_list(args) -> int:
    from .methods import all_methods
    from .tasks import TASKS

    tasks = [cls().summary() for cls in TASKS.values()]
    methods = [
        {"name": m.name, "description": m.description, "output": m.output,
         "variants": [{"name": v, "description": d, "default": v in m.default_variants} for v, (_, d) in m.variants.items()]}
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
    print("Methods:")
    for m in methods:
        print(f"  {m['name']:<16} {m['description']} [{m['output']}]")
        for v in m["variants"]:
            print(f"    {'*' if v['default'] else ' '} {v['name']:<34} {v['description']}")
    print("(* = run by default)")
    return 0


def cmd_graph(args) -> int:
    from .architectures import ARCHITECTURES
    from .graph import Graph

    if args.model not in ARCHITECTURES:
        _fail(f"unknown model {args.model!r}; valid models: {', '.join(ARCHITECTURES)}")
    if args.random_init:
        cfg = ARCHITECTURES[args.model]
    else:
        from .loading import load_weights

        cfg = load_weights(args.model, weights_dir=args.weights_dir).cfg
    g = Graph(cfg)
    out = g.summary()
    if args.names:
        out["node_names"] = g.all_nodes
        out["edge_names"] = g.edge_names
    print(json.dumps(out, indent=1))
    return 0


def cmd_report(args) -> int:
    from . import report

    print(report.render(args.dir))
    return 0


def cmd_compare(args) -> int:
    from .compare import compare

    try:
        c = compare(args.dir, args.baseline, args.tolerance, args.time_factor)
    except FileNotFoundError as e:
        _fail(str(e))
    print("\n".join(c.lines()))
    return 0 if c.ok else 1


def cmd_ground_truth(args) -> int:
    from .structural_gt import write_all

    for p in write_all(args.dir):
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="circuit-bench", description="Benchmark gradient-based circuit discovery.")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run methods on tasks, score them against ground truth, write results and a report")
    r.add_argument("--tasks", nargs="+", help="task names (default: every task that runs offline)")
    r.add_argument("--methods", nargs="+", help="method names (default: all)")
    r.add_argument("--variants", nargs="+", help="variant names (default: each method's default variants)")
    r.add_argument("--out", default="out", help="output directory (default: out)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    r.add_argument("--split", default="validation", choices=["validation", "test"])
    r.add_argument("--ablation", default="resample", choices=["resample", "zero"])
    r.add_argument("--weights-dir", help="directory holding pretrained weights (see README)")
    r.add_argument("--fresh", action="store_true", help="discard finished results in --out and start over")
    r.add_argument("--bootstrap", type=int, default=20, help="resamples of the examples for 95%% AUC intervals (0: off)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_run)
    li = sub.add_parser("list", help="list tasks, methods and variants")
    li.add_argument("--json", action="store_true")
    li.set_defaults(fn=cmd_list)
    g = sub.add_parser("graph", help="print a model's ACDC graph as JSON")
    g.add_argument("--model", required=True)
    g.add_argument("--random-init", action="store_true", help="use the real config with random weights (offline)")
    g.add_argument("--names", action="store_true", help="include node and edge names")
    g.add_argument("--weights-dir")
    g.set_defaults(fn=cmd_graph)
    rp = sub.add_parser("report", help="render DIR/report.md from a run's results")
    rp.add_argument("dir")
    rp.set_defaults(fn=cmd_report)
    cp = sub.add_parser("compare", help="exit 1 if DIR's results regressed against a baseline results.csv")
    cp.add_argument("dir")
    cp.add_argument("--baseline", required=True, help="a results.csv (or a directory holding one)")
    cp.add_argument("--tolerance", type=float, default=0.02, help="allowed AUC drop (absolute, default 0.02)")
    cp.add_argument("--time-factor", type=float, default=1.5, help="allowed growth of a timing ratio (default 1.5x)")
    cp.set_defaults(fn=cmd_compare)
    gt = sub.add_parser("ground-truth", help="derive structural ground truths of tracr programs into ground_truth/")
    gt.add_argument("--dir", default=None)
    gt.set_defaults(fn=cmd_ground_truth)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
