"""Circuit drawings: a ranking's top-k edges against a ground truth, laid out by layer.

k is the ground truth's size, so a perfect ranking draws the ground truth in one colour. The
predicted circuit is every edge whose |score| reaches the k-th largest, where scores closer than
the run's tie floor tie (so a tied block at the cut enters whole and the drawing can hold more
than k edges), and never an edge whose |score| is within the floor of zero (a ranking cannot
tell those edges from absent ones). Edges are coloured by agreement: in both (true positive),
predicted only (false positive), ground truth only (false negative). Nodes sit in one box per
layer, inputs at the bottom and the output at the top, as in ACDC's drawings; a head's q/k/v
nodes are joined to its output, and an MLP's input to its output, by thin dotted lines (ACDC's
placeholder edges: structure, never scored).

Drawn with Graphviz's `dot` through the `graphviz` package: SVG for the HTML report, PNG beside
it for report.md. Without `dot` the DOT source is still written and the report says how to
install it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.graph import node_place

COLOURS = {"tp": "#1f77b4", "fp": "#ff7f0e", "fn": "#7f7f7f"}  # colour-blind safe: blue, orange, grey
WORDS = {"tp": "in both", "fp": "predicted only", "fn": "missed"}
MAX_DRAWN_EDGES = 300  # beyond this a drawing is a hairball: the head map says more
CAPTION = ("Circuit drawings: the ground truth against each method's top-k edges (best variant by edge AUC, as in "
           "the headline), k = the ground truth's size. Blue: in both; orange: predicted only; grey dashed: missed. "
           "Edges whose |score| ties with the k-th largest (within the tie floor) enter together, and an edge "
           "scoring within the floor of zero is never predicted, so a drawing can hold more or fewer than k "
           "predicted edges. Boxes are layers, inputs at the bottom; dotted lines join a head's q/k/v to its "
           "output and an MLP's input to its output (structure, not scored).")
INSTALL_DOT = ("Circuit drawings need Graphviz's `dot` program (Debian/Ubuntu: `apt-get install graphviz`; macOS: "
               "`brew install graphviz`); their DOT sources are written beside the report")


def predicted(scores, k: int, floor: float = 0.0) -> np.ndarray:
    """Bool [n_edges]: the top-k edges by |score|, a tied block at the cut entering whole, none
    within `floor` of zero."""
    a = np.abs(np.asarray(scores, dtype=np.float64))
    if k <= 0 or not len(a):
        return np.zeros(len(a), dtype=bool)
    cut = np.sort(a)[::-1][min(k, len(a)) - 1]
    return (a >= cut - floor) & (a > floor)


def label(node: str) -> str:
    """A short label in ACDC's notation: a3.5 q (head 3.5's query), m2 (MLP 2), embed, output."""
    p = node_place(node)
    if p.role in ("embed", "resid_pre"):
        return "embed"
    if p.role == "pos_embed":
        return "pos embed"
    if p.role == "resid_post":
        return "output"
    if p.role.startswith("mlp"):
        return f"m{p.layer}" + (" in" if p.role == "mlp_in" else "")
    role = {"result": ""}.get(p.role, " " + p.role.replace("_input", " in"))
    return f"a{p.layer}.{p.head}{role}"


def _cluster(node: str) -> str:
    p = node_place(node)
    return "inputs" if p.layer < 0 else "output" if p.role == "resid_post" else f"layer {p.layer}"


def _placeholders(nodes: set) -> list:
    """ACDC's placeholder edges (q/k/v -> head output, MLP in -> out) between drawn nodes."""
    out = []
    for n in nodes:
        p = node_place(n)
        if p.role in ("q", "k", "v"):
            target = f"blocks.{p.layer}.attn.hook_result[:, :, {p.head}]"
        elif p.role == "mlp_in":
            target = f"blocks.{p.layer}.hook_mlp_out[:]"
        else:
            continue
        if target in nodes:
            out.append((n, target))
    return out


@dataclass
class Drawing:
    """One drawing's counts and files: `svg` is the inline SVG text (None without `dot`)."""

    counts: dict
    dot_path: Path
    svg: str | None = None
    png_path: Path | None = None


def circuit_dot(endpoints: list, scores, gt_edges, k: int | None = None, floor: float = 0.0, title: str = ""):
    """(graphviz.Digraph, counts): the drawing of `scores` [n_edges] (edge order of `endpoints`,
    [(sender, receiver)]) against the ground truth's edge indices `gt_edges`."""
    import graphviz

    truth = np.zeros(len(endpoints), dtype=bool)
    truth[list(gt_edges)] = True
    pred = predicted(scores, int(truth.sum()) if k is None else k, floor)
    kinds = {"tp": pred & truth, "fp": pred & ~truth, "fn": ~pred & truth}
    counts = {kind: int(mask.sum()) for kind, mask in kinds.items()}
    drawn = [(i, kind) for kind, mask in kinds.items() for i in np.flatnonzero(mask)]
    nodes = {n for i, _ in drawn for n in endpoints[i]}
    g = graphviz.Digraph(graph_attr={"rankdir": "BT", "fontname": "Helvetica", "fontsize": "11", "nodesep": "0.15",
                                     "ranksep": "0.3", "labelloc": "t"},
                         node_attr={"shape": "box", "style": "rounded,filled", "fillcolor": "white", "fontsize": "9",
                                    "fontname": "Helvetica", "height": "0.25", "margin": "0.05,0.02"},
                         edge_attr={"arrowsize": "0.5"})
    legend = " &nbsp; ".join(f'<font color="{COLOURS[kind]}">{WORDS[kind]} {counts[kind]}</font>' for kind in COLOURS)
    g.attr(label=f"<{_escape(title)}<br/>{legend}>")
    ids = {n: f"n{i}" for i, n in enumerate(sorted(nodes, key=lambda n: (node_place(n).layer, n)))}  # DOT reads ':' as a port
    by_cluster: dict = {}
    for n in ids:
        by_cluster.setdefault(_cluster(n), []).append(n)
    for name, members in by_cluster.items():
        with g.subgraph(name=f"cluster_{re.sub(r'[^A-Za-z0-9]', '_', name)}") as c:
            c.attr(label=name, style="rounded", color="#cccccc", fontsize="9")
            for n in members:
                c.node(ids[n], label(n), tooltip=n)
    for s, r in _placeholders(nodes):
        g.edge(ids[s], ids[r], style="dotted", color="#bbbbbb", arrowhead="none")
    for i, kind in drawn:
        s, r = endpoints[i]
        g.edge(ids[s], ids[r], color=COLOURS[kind], penwidth="1.6" if kind != "fn" else "1.2",
               style="dashed" if kind == "fn" else "solid", tooltip=f"{s} -> {r}: {WORDS[kind]}")
    return g, counts


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def draw_circuit(endpoints: list, scores, gt_edges, stem: Path, title: str, k: int | None = None,
                 floor: float = 0.0) -> Drawing | None:
    """Write `stem`.gv, and with `dot` `stem`.svg and `stem`.png; None when more than
    MAX_DRAWN_EDGES edges would be drawn."""
    import graphviz

    g, counts = circuit_dot(endpoints, scores, gt_edges, k, floor, title)
    if sum(counts.values()) > MAX_DRAWN_EDGES:
        return None
    stem = Path(stem)
    dot_path = stem.with_suffix(".gv")
    dot_path.write_text(g.source, encoding="utf-8")
    try:
        svg = g.pipe(format="svg", encoding="utf-8")
        png = g.pipe(format="png")
    except graphviz.ExecutableNotFound:
        return Drawing(counts, dot_path)
    stem.with_suffix(".svg").write_text(svg, encoding="utf-8")
    png_path = stem.with_suffix(".png")
    png_path.write_bytes(png)
    return Drawing(counts, dot_path, inline_svg(svg, stem.name), png_path)


def inline_svg(svg: str, prefix: str) -> str:
    """`svg` (dot's output) ready to sit inside an HTML page beside others: no XML prolog or
    doctype, every id prefixed so two drawings never share one."""
    svg = svg[svg.index("<svg"):]
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", prefix)
    return re.sub(r'\bid="', f'id="{safe}_', svg)


class CannotDraw(ValueError):
    """A drawing the run folder cannot give (one line, naming what is missing)."""


def draw_from_run(out_dir, task: str, method: str, variant: str | None = None, reference: str | None = None,
                  ground_truth: str | None = None, k: int | None = None) -> Drawing:
    """Draw one stored ranking of a run folder against one of its task's ground truths:
    `variant` defaults to the method's best by edge AUC (as in the headline), `reference` to the
    only one or resample, `ground_truth` to the primary one, `k` to its size. Writes
    OUT/circuit_<task>_<reference>_<method>_<variant>_k<k>.{gv,svg,png}."""
    from harness.report.headline import best_variant_row, primary_ground_truth
    from harness.run.store import ResultStore

    store = ResultStore(out_dir)
    edges = store.edge_file(task)
    if edges is None:
        raise CannotDraw(f"no edges file for task {task} in {out_dir} (run `circuit-bench run --tasks {task} "
                         f"--out {out_dir}` first)")
    truths = edges.get("ground_truth") or {}
    if not truths:
        raise CannotDraw(f"the run folder holds no ground truth of task {task} (a task without a circuit, or a run "
                         f"from before drawings: re-run `circuit-bench run --tasks {task} --out {out_dir}`)")
    gt = ground_truth or primary_ground_truth(truths)
    if gt not in truths:
        raise CannotDraw(f"task {task} has no ground truth {gt!r} in this run; it has: {', '.join(sorted(truths))}")
    recs = [r for r in store.records() if r.get("task") == task and r.get("method") == method
            and r.get("status") == "ok" and r.get("control", "trained") == "trained"]
    if not recs:
        raise CannotDraw(f"no finished {method} run of task {task} in {out_dir}")
    if all(r.get("scores") is None for r in recs):
        raise CannotDraw(f"{method} gives circuits, not a ranking of edges: nothing to take the top k of")
    refs = sorted({r["ablation"] for r in recs})
    ref = reference or ("resample" if "resample" in refs else refs[0])
    recs = [r for r in recs if r["ablation"] == ref and r.get("scores") is not None]
    if not recs:
        raise CannotDraw(f"no {method} run of task {task} under the {ref} reference; it ran under: {', '.join(refs)}")
    if variant is None:  # the headline's rule, on this ground truth
        df = store.frame()
        scored = df[(df["task"] == task) & (df["method"] == method) & (df["ablation"] == ref)
                    & (df["control"].fillna("trained") == "trained") & (df["ground_truth"] == gt)
                    & (df["level"] == "edge") & df["auc"].notna() & df["variant"].isin({r["variant"] for r in recs})]
        best = best_variant_row(scored)["variant"] if len(scored) else min(r["variant"] for r in recs)
        rec = next(r for r in recs if r["variant"] == best)
    else:
        found = [r for r in recs if r["variant"] == variant]
        if not found:
            raise CannotDraw(f"no {method} variant {variant!r} of task {task} under {ref}; it has: "
                             f"{', '.join(sorted(r['variant'] for r in recs))}")
        rec = found[0]
    n = len(truths[gt]) if k is None else k
    if n < 1:
        raise CannotDraw(f"k must be at least 1 (got {n})")
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"circuit_{task}_{ref}_{method}_{rec['variant']}_k{n}")
    d = draw_circuit([tuple(e) for e in edges["edges"]], rec["scores"], truths[gt], Path(out_dir) / name,
                     f"{task}: {method} {rec['variant']} ({ref} reference), top {n} against {gt}", k=n,
                     floor=float(rec.get("tie_floor") or 0.0))
    if d is None:
        raise CannotDraw(f"over {MAX_DRAWN_EDGES} edges would be drawn (ground truth {len(truths[gt])}, k {n}): "
                         "too many to read; use a smaller --k or the report's layer x head map")
    return d
