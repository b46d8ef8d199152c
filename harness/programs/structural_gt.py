"""Ground truth of a tracr model read off its compiled weights (docs/tracr.md#structural-ground-truth).

Rule ("structural", InterpBench's): tracr gives every RASP variable its own residual
subspace, named by `residual_labels`. A component *reads* the dims with nonzero rows of its
W_Q / W_K / W_V (per head) or W_in, and *writes* the dims with nonzero columns of W_O or W_out;
the inputs write what their embeddings write (tokens -> hook_embed, indices -> hook_pos_embed)
and the output reads the rows of W_U. An ADDITION edge is in the circuit iff the sender's write
set meets the receiver's read set, ignoring the `one` and `tokens:BOS` directions (constant
bias and BOS-attention terms, as InterpBench drops them). A used head's DIRECT edge
q/k/v_input -> q/k/v is added for each letter that has an incoming edge. Exact, because the
subspaces are disjoint; no discovery run is involved.

Variant "structural-ablation" adds refinement (a) of docs/tracr.md#structural-ground-truth: a q (k) edge is dropped when the
head's QK block is the same for every value the sender can put there (equal rows (columns) of
W_Q W_K^T over each of the sender's one-hot variables), e.g. a TRUE predicate or a lambda that
ignores the query. Such an edge changes nothing under resample ablation. It is written only for
programs where it differs from "structural".

Variant "structural-zero" is the circuit matched to zero ablation: the `one` and `tokens:BOS`
dims count as read. They hold the same value on every input, so resample ablation never moves
them, but zeroing an edge removes them too: a SelectorWidth head's value reads tokens:BOS and its
MLP reads `one`, a categorical Aggregate's query and key read them for its default attention to
BOS, and many MLPs use `one` as a bias. Written only where it differs from "structural".

`write_all()` (CLI: `circuit-bench ground-truth`) writes `ground_truth/<task>.structural.json`
(and `.structural-ablation.json`) for every bundled tracr program.
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.core.ground_truth import GroundTruth, ground_truth_dir, load_ground_truth, save_ground_truth
from harness.core.graph import QKV, Graph
from harness.programs.rasp_programs import PROGRAMS
from harness.programs.tracr_models import TracrModel, load_tracr

VARIANTS = ("structural", "structural-ablation", "structural-zero")
SOURCE = ("derived from the compiled tracr program's weights and residual labels by "
          "harness.structural_gt (circuit-bench ground-truth); no discovery run")
RULE = ("Structural rule (InterpBench; docs/tracr.md#structural-ground-truth): a component reads the residual dims "
        "with nonzero rows of W_Q/W_K/W_V/W_in and writes those with nonzero columns of W_O/W_out "
        "(tokens -> hook_embed, indices -> hook_pos_embed, output reads W_U's rows); an edge exists iff a "
        "write set meets a read set, ignoring the 'one' and 'tokens:BOS' dims; each used head gets its "
        "DIRECT q/k/v edges for the letters with incoming edges.")
ZERO_RULE = (" Zero-ablation variant: the 'one' and 'tokens:BOS' dims count as read (zeroing an edge also "
             "removes the constant bias and BOS-attention terms it carries, which change the output).")
ABLATION_RULE = (" Ablation-aware refinement (a): q/k edges whose QK block is constant across the "
                 "sender's values are dropped (they cannot matter under resample ablation).")
TOL = 1e-8


def _nz_rows(w: torch.Tensor) -> torch.Tensor:
    return w.abs().amax(-1) > TOL


def read_write_sets(model: TracrModel, graph: Graph, keep_constant_dims: bool = False):
    """Bool [n_receivers, d_model] read sets and [n_senders, d_model] write sets; the `one` and
    `tokens:BOS` dims are removed from the read sets unless `keep_constant_dims`."""
    w, cfg = model.weights, model.weights.cfg
    D = cfg.d_model
    reads = torch.zeros(len(graph.receivers), D, dtype=torch.bool)
    writes = torch.zeros(len(graph.senders), D, dtype=torch.bool)
    writes[0] = _nz_rows(w["embed.W_E"].T)
    writes[1] = _nz_rows(w["pos_embed.W_pos"].T)
    for L in range(cfg.n_layers):
        for li, m in enumerate("QKV"):
            for h in range(cfg.n_heads):
                reads[graph.qkv_receiver[L, li, h]] = _nz_rows(w[f"blocks.{L}.attn.W_{m}"][h])
        for h in range(cfg.n_heads):
            writes[graph.head_sender[L, h]] = _nz_rows(w[f"blocks.{L}.attn.W_O"][h].T)
        reads[graph.mlp_receiver[L]] = _nz_rows(w[f"blocks.{L}.mlp.W_in"])
        writes[graph.mlp_sender[L]] = _nz_rows(w[f"blocks.{L}.mlp.W_out"].T)
    reads[graph.output_receiver] = _nz_rows(w["unembed.W_U"])
    if keep_constant_dims:
        return reads, writes
    drop = torch.tensor([lab in ("one", f"tokens:{model.bos}") for lab in model.residual_labels])
    return reads & ~drop, writes


def _qk_constant(model: TracrModel, graph: Graph, edge: int, writes: torch.Tensor, reads: torch.Tensor) -> bool:
    """Whether a q (k) edge's sender variables all leave the head's QK scores unchanged."""
    r = graph.receivers[int(graph.add_receiver[edge])]
    s = int(graph.add_sender[edge])
    pre = f"blocks.{r.layer}.attn."
    qk = model.weights[pre + "W_Q"][r.head] @ model.weights[pre + "W_K"][r.head].T  # [d_model(q), d_model(k)]
    if r.kind == "k":
        qk = qk.T
    dims = (writes[s] & reads[int(graph.add_receiver[edge])]).nonzero().flatten().tolist()
    groups: dict[str, list] = {}
    for d in dims:
        groups.setdefault(model.residual_labels[d].split(":")[0], []).append(d)
    for label_dims in groups.values():
        if len(label_dims) < 2 or ":" not in model.residual_labels[label_dims[0]]:
            return False  # a numerical variable (or a single value vs None) can change the scores
        rows = qk[label_dims]
        if not torch.allclose(rows, rows[:1].expand_as(rows), atol=1e-6):
            return False
    return True


def edge_mask(model: TracrModel, variant: str = "structural", graph: Graph | None = None) -> torch.Tensor:
    """Bool [n_edges]: the ground-truth edges of a compiled tracr model."""
    if variant not in VARIANTS:
        raise KeyError(f"unknown structural variant {variant!r}; variants: {', '.join(VARIANTS)}")
    g = graph or Graph(model.weights.cfg)
    reads, writes = read_write_sets(model, g, keep_constant_dims=variant == "structural-zero")
    meets = (reads.float() @ writes.float().T) > 0  # [n_receivers, n_senders]
    mask = torch.zeros(g.n_edges, dtype=torch.bool)
    mask[: g.n_add] = meets[g.add_receiver, g.add_sender]
    if variant == "structural-ablation":
        for e in mask[: g.n_add].nonzero().flatten().tolist():
            if g.receivers[int(g.add_receiver[e])].kind in ("q", "k") and _qk_constant(model, g, e, writes, reads):
                mask[e] = False
    fed = torch.zeros(len(g.receivers), dtype=torch.bool)
    fed[g.add_receiver[mask[: g.n_add]]] = True
    cfg = model.weights.cfg
    for L in range(cfg.n_layers):
        for li, letter in enumerate(QKV):
            for h in range(cfg.n_heads):
                if fed[g.qkv_receiver[L, li, h]]:
                    mask[g.direct_index(L, letter, h)] = True
    return mask


def short_name(node: str) -> str:
    """'blocks.1.hook_q_input[:, :, 0]' -> 'a1.0(q)'; embeds, MLPs and the output likewise."""
    if node.startswith("hook_embed"):
        return "embed"
    if node.startswith("hook_pos_embed"):
        return "pos_embed"
    if "resid_post" in node:
        return "out"
    layer = node.split(".")[1]
    if "mlp" in node:
        return f"m{layer}"
    head = node.rsplit(", ", 1)[1].rstrip("]")
    for letter in QKV:
        if f"hook_{letter}" in node:
            return f"a{layer}.{head}({letter})"
    return f"a{layer}.{head}"


def short_edge(sender: str, receiver: str) -> str:
    """'embed->a0.0(q)' for ADDITION edges, 'a0.0(q) DIRECT' for q_input -> q."""
    if "_input" in sender:
        return f"{short_name(sender)} DIRECT"
    return f"{short_name(sender)}->{short_name(receiver)}"


def describe_edges(edges) -> list[str]:
    """Component-level names of ADDITION edges ('embed->a0.0(q)'); DIRECT edges are omitted."""
    return sorted(short_edge(s, r) for s, r in edges if "_input" not in s)


def compare_with_acdc(task: str, edges, model: TracrModel, graph: Graph) -> str:
    """Which edges the structural GT and ACDC's stored (zero-ablation) GT disagree on, and why."""
    path = ground_truth_dir() / f"{task}.acdc.json"
    if not path.exists():
        return ""
    acdc = set(load_ground_truth(path).edges)
    ours = set(edges)
    reads, writes = read_write_sets(model, graph)
    raw, _ = read_write_sets(model, graph, keep_constant_dims=True)
    labels = model.residual_labels
    abl_mask = edge_mask(model, "structural-ablation", graph)
    abl = {graph.edge_endpoints[i] for i in abl_mask.nonzero().flatten().tolist()}

    def why(e, in_acdc: bool) -> str:
        s, r = e
        if "_input" in s:
            return "follows its input edges above"
        i = graph.edge_ids[f"{s} -> {r}"]
        si, ri = int(graph.add_sender[i]), int(graph.add_receiver[i])
        carried = [labels[d] for d in (writes[si] & raw[ri]).nonzero().flatten().tolist()]
        if in_acdc and carried and not (writes[si] & reads[ri]).any():
            return "carries only " + "/".join(sorted(set(carried))) + " (dropped by the structural rule; matters under zero ablation)"
        if not in_acdc and e not in abl:
            return "QK constant across the sender's values, refinement (a); ACDC's zero-ablation run found it unneeded"
        return "carries " + ", ".join(sorted({c.split(':')[0] for c in carried})) if carried else "no shared dims"

    only_ours = sorted(ours - acdc)
    only_acdc = sorted(acdc - ours)
    parts = [f"Compared with ACDC's stored GT ({len(acdc)} edges, zero-ablation ACDC run) the structural GT "
             f"({len(ours)} edges) shares {len(ours & acdc)}."]
    if only_ours:
        parts.append("Only structural: " + "; ".join(f"{short_edge(s, r)} [{why((s, r), False)}]" for s, r in only_ours) + ".")
    if only_acdc:
        parts.append("Only ACDC: " + "; ".join(f"{short_edge(s, r)} [{why((s, r), True)}]" for s, r in only_acdc) + ".")
    return " ".join(parts)


def derive(task: str, variant: str = "structural", model: TracrModel | None = None) -> GroundTruth:
    """The GroundTruth of a bundled tracr program (default sizes unless `model` is given)."""
    model = model or load_tracr(task)
    g = Graph(model.weights.cfg)
    mask = edge_mask(model, variant, g)
    edges = sorted(g.edge_endpoints[i] for i in mask.nonzero().flatten().tolist())
    desc = RULE + {"structural-ablation": ABLATION_RULE, "structural-zero": ZERO_RULE}.get(variant, "")
    desc += " Components: " + ", ".join(describe_edges(edges)) + "."
    if variant == "structural":
        cmp = compare_with_acdc(task, edges, model, g)
        if cmp:
            desc += " " + cmp
    extra = {"rule": variant, "n_edges_graph": g.n_edges}
    return GroundTruth(task, variant, model.weights.cfg.name, SOURCE, edges, desc, extra=extra)


def derive_all(task: str, model: TracrModel | None = None) -> dict:
    """variant -> GroundTruth; "structural-ablation" and "structural-zero" only where they differ
    from "structural"."""
    model = model or load_tracr(task)
    out = {"structural": derive(task, "structural", model)}
    for variant in VARIANTS[1:]:
        gt = derive(task, variant, model)
        if set(gt.edges) != set(out["structural"].edges):
            out[variant] = gt
    return out


def write_all(directory=None) -> list[Path]:
    """Write `<task>.structural[-ablation|-zero].json` for every bundled tracr program; returns
    paths. A stale variant file (the variant no longer differs) is removed."""
    d = Path(directory) if directory else ground_truth_dir()
    paths = []
    for task in PROGRAMS:
        gts = derive_all(task)
        for gt in gts.values():
            paths.append(save_ground_truth(gt, d))
        for variant in VARIANTS[1:]:
            stale = d / f"{task}.{variant}.json"
            if variant not in gts and stale.exists():
                stale.unlink()
    return paths
