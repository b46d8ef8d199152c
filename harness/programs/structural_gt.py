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
dims count as read where zeroing them changes the output. They hold the same value on every
input, so resample ablation never moves them, but zeroing an edge removes them too: MLPs use
`one` as a bias, a SelectorWidth head's value reads tokens:BOS and its q/k set how much it attends
to BOS (always selected), and an Aggregate's q/k hold its default attention to BOS, which decides
the output only at a query no key matches: those count where the head attends mostly to BOS on
the inputs the program is evaluated on (`bos_default_heads`; the tasks' validation and test
inputs). Written only where it differs from "structural".

`write_all()` (CLI: `circuit-bench ground-truth`) writes `ground_truth/<task>.structural.json`
(and `.structural-ablation.json` / `.structural-zero.json`) for every bundled tracr program.
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
ZERO_RULE = (" Zero-ablation variant: the 'one' and 'tokens:BOS' dims count as read where zeroing them changes the "
             "output: MLP biases, SelectorWidth heads' value and q/k, and an Aggregate's BOS-default q/k where a query "
             "past BOS matches no key on the task's inputs.")
ABLATION_RULE = (" Ablation-aware refinement (a): q/k edges whose QK block is constant across the "
                 "sender's values are dropped (they cannot matter under resample ablation).")
TOL = 1e-8


def _nz_rows(w: torch.Tensor) -> torch.Tensor:
    return w.abs().amax(-1) > TOL


def bos_default_heads(model: TracrModel, graph: Graph, tokens: torch.Tensor) -> set:
    """(layer, head) of the heads that attend mostly (> 1/2) to BOS at some query position past
    BOS on `tokens` [batch, pos] (the compiled program's inputs): an Aggregate whose query no key
    matches there, so it falls back on its BOS default and the `one`/BOS terms of its q/k decide
    the output. (BOS's own position, where no key matches either, is left out: what a head
    writes there reaches the output only if a later head reads it as key 0, and whether that
    changes anything depends on the later head; docs/suite.md, exceptions.)"""
    from harness.core.engine import Engine, attention_patterns

    cfg = model.weights.cfg
    trace = Engine(model.weights.to(dtype=torch.float64)).run(tokens, record=True)
    out = set()
    for L in range(cfg.n_layers):
        to_bos = attention_patterns(cfg, trace.qkv[L][0], trace.qkv[L][1])[:, :, 1:, 0].amax(dim=(0, 2))  # [n_heads]
        out |= {(L, h) for h in range(cfg.n_heads) if to_bos[h] > 0.5}
    return out


def _bos_default_terms(model: TracrModel, layer: int, head: int) -> tuple:
    """(query dims, key dims) among `one`/`tokens:BOS` whose only QK term is the one between the
    query's `one` and the key's BOS: the default attention to BOS, which moves the output only
    at a query no key matches. A constant dim with any other QK term (a predicate that compares
    with a constant) is left out of both."""
    w = model.weights
    qk = w[f"blocks.{layer}.attn.W_Q"][head] @ w[f"blocks.{layer}.attn.W_K"][head].T  # [d_model(q), d_model(k)]
    labels = model.residual_labels
    const = [i for i, lab in enumerate(labels) if lab in ("one", f"tokens:{model.bos}")]
    one = [i for i in const if labels[i] == "one"]
    bos = [i for i in const if labels[i] != "one"]
    nz = qk.abs() > TOL
    not_bos, not_one = torch.ones(len(labels), dtype=torch.bool), torch.ones(len(labels), dtype=torch.bool)
    not_bos[bos], not_one[one] = False, False
    return [i for i in const if not nz[i, not_bos].any()], [i for i in const if not nz[not_one, i].any()]


def read_write_sets(model: TracrModel, graph: Graph, keep_constant_dims=False, tokens: torch.Tensor | None = None):
    """Bool [n_receivers, d_model] read sets and [n_senders, d_model] write sets; the `one` and
    `tokens:BOS` dims are removed from the read sets unless `keep_constant_dims` (True: kept
    everywhere; "zero": kept where zeroing them changes the output, see "structural-zero": in
    MLPs, values, SelectorWidth heads' q/k, and the q/k of heads `bos_default_heads` finds on
    `tokens`)."""
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
    drop = torch.tensor([lab in ("one", f"tokens:{model.bos}") for lab in model.residual_labels])
    if keep_constant_dims == "zero":  # what zeroing an edge removes and changes the output through
        used = bos_default_heads(model, graph, tokens) if tokens is not None else set()
        for L in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                if (L, h) in used or (reads[graph.qkv_receiver[L, 2, h]] & drop).any():
                    continue  # a used BOS default, or a SelectorWidth head (BOS always attended: its q/k terms set the count)
                for li, dims in enumerate(_bos_default_terms(model, L, h)):  # used only where no key matches
                    reads[graph.qkv_receiver[L, li, h]][dims] = False
        return reads, writes
    if keep_constant_dims:
        return reads, writes
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


def edge_mask(model: TracrModel, variant: str = "structural", graph: Graph | None = None,
              tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [n_edges]: the ground-truth edges of a compiled tracr model (`tokens` [batch, pos]:
    the inputs it is evaluated on, which "structural-zero" reads; the others ignore them)."""
    if variant not in VARIANTS:
        raise KeyError(f"unknown structural variant {variant!r}; variants: {', '.join(VARIANTS)}")
    g = graph or Graph(model.weights.cfg)
    reads, writes = read_write_sets(model, g, "zero" if variant == "structural-zero" else False, tokens)
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


def derive(task: str, variant: str = "structural", model: TracrModel | None = None,
           tokens: torch.Tensor | None = None) -> GroundTruth:
    """The GroundTruth of a bundled tracr program (default sizes unless `model` is given);
    `tokens`: the inputs it is evaluated on (edge_mask)."""
    model = model or load_tracr(task)
    g = Graph(model.weights.cfg)
    mask = edge_mask(model, variant, g, tokens)
    edges = sorted(g.edge_endpoints[i] for i in mask.nonzero().flatten().tolist())
    desc = RULE + {"structural-ablation": ABLATION_RULE, "structural-zero": ZERO_RULE}.get(variant, "")
    desc += " Components: " + ", ".join(describe_edges(edges)) + "."
    if variant == "structural":
        cmp = compare_with_acdc(task, edges, model, g)
        if cmp:
            desc += " " + cmp
    extra = {"rule": variant, "n_edges_graph": g.n_edges}
    return GroundTruth(task, variant, model.weights.cfg.name, SOURCE, edges, desc, extra=extra)


def derive_all(task: str, model: TracrModel | None = None, tokens: torch.Tensor | None = None) -> dict:
    """variant -> GroundTruth; "structural-ablation" and "structural-zero" only where they differ
    from "structural" (`tokens`: the inputs the program is evaluated on, for "structural-zero")."""
    model = model or load_tracr(task)
    out = {"structural": derive(task, "structural", model)}
    for variant in VARIANTS[1:]:
        gt = derive(task, variant, model, tokens)
        if set(gt.edges) != set(out["structural"].edges):
            out[variant] = gt
    return out


def write_all(directory=None, inputs=None) -> list[Path]:
    """Write `<task>.structural[-ablation|-zero].json` for every bundled tracr program; returns
    paths. `inputs`: task -> the tokens [batch, pos] it is evaluated on (its data; the CLI passes
    them). A stale variant file (the variant no longer differs) is removed."""
    d = Path(directory) if directory else ground_truth_dir()
    paths = []
    for task in PROGRAMS:
        gts = derive_all(task, tokens=inputs(task) if inputs else None)
        for gt in gts.values():
            paths.append(save_ground_truth(gt, d))
        for variant in VARIANTS[1:]:
            stale = d / f"{task}.{variant}.json"
            if variant not in gts and stale.exists():
                stale.unlink()
    return paths
