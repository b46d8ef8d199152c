"""ACDC's computational graph (Conmy et al. 2023, `TLACDCCorrespondence.setup_from_model`).

Nodes are TransformerLens hook names with an index, written as ACDC prints them:
`blocks.3.attn.hook_result[:, :, 5]` is head 3.5's output, `blocks.0.hook_resid_pre[:]` the
embedding. Edges are named `"<sender> -> <receiver>"`; ground-truth files use these names.

Three edge types (docs/graph-and-patching.md#computational-graph):
- ADDITION: a residual writer (input node, head output, MLP output) into a later residual
  reader (a head's q/k/v input, an MLP input, the final residual).
- DIRECT: a head's q/k/v input into its q/k/v. Counted, and patchable, as in ACDC.
- PLACEHOLDER: q/k/v -> head output and MLP in -> MLP out. Never counted, never patched.

Grouped-query attention (docs/graph-and-patching.md#model-families): a layer has one q input
per query head and one k and one v input per key/value head, named by the key/value head's index
as TransformerLens names `hook_k`/`hook_v` ([:, :, g] for g < n_key_value_heads). A layer's DIRECT
edges are its q inputs -> q (per query head), then k, then v (per key/value head). The per-head
index tensors (`qkv_receiver`, `direct_slot`) stay [n_layers, 3, n_heads]: head h's k and v entries
name its group's receiver and edge, so code that works per query head finds, for k and v, the
receiver or edge it shares with its group (sum over the group when turning per-head gradient
terms into per-edge scores: `direct_from_heads`).

With parallel attention and MLP (GPT-NeoX/Pythia) an MLP input reads the layer's input
residual: no edges from its own layer's heads.

Besides the lists, the graph holds index tensors so the engine and methods work on all edges at
once: senders and receivers are numbered in topological order, and ADDITION edge e joins
`add_sender[e]` to `add_receiver[e]`; `dense_index[r, s]` is that edge's id or -1.
Counted edges are numbered ADDITION first (receiver-major), then DIRECT.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, NamedTuple

import torch

from harness.core.weights import ModelConfig

QKV = ("q", "k", "v")


def head_index(h: int) -> str:
    return f"[:, :, {h}]"


def node_name(hook: str, head: int | None = None) -> str:
    return hook + (head_index(head) if head is not None else "[:]")


def edge_name(sender: str, receiver: str) -> str:
    return f"{sender} -> {receiver}"


class NodePlace(NamedTuple):
    """Where a node sits: `layer` (-1 for the inputs), `head` (None for non-head nodes) and its
    `role`: embed, pos_embed, resid_pre, q_input, k_input, v_input, q, k, v, result, mlp_in,
    mlp_out or resid_post."""

    layer: int
    head: int | None
    role: str


_NODE = re.compile(r"(?:blocks\.(\d+)\.)?(?:attn\.)?hook_(\w+?)(?:\[:, :, (\d+)\]|\[:\])")


def node_place(name: str) -> NodePlace:
    """The layer, head and role of a node named as the graph names it (`node_name`)."""
    m = _NODE.fullmatch(name)
    if m is None:
        raise ValueError(f"{name!r} is not a node name of ACDC's graph")
    layer, role, head = m.groups()
    inputs = role in ("embed", "pos_embed", "resid_pre")
    return NodePlace(-1 if inputs else int(layer), None if head is None else int(head), role)


@dataclass(frozen=True)
class Sender:
    name: str
    kind: str  # "input", "head", "mlp"
    layer: int  # -1 for input nodes
    head: int | None = None


@dataclass(frozen=True)
class Receiver:
    name: str
    kind: str  # "q", "k", "v", "mlp", "out"
    layer: int  # n_layers for the output
    head: int | None = None
    n_upstream: int = 0  # senders 0..n_upstream-1 feed it


class Graph:
    """The edge-level graph of one architecture, built from its config alone."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        L, H = cfg.n_layers, cfg.n_heads
        senders: list[Sender] = []
        if cfg.split_embed:
            senders += [Sender("hook_embed[:]", "input", -1), Sender("hook_pos_embed[:]", "input", -1)]
        else:
            senders.append(Sender("blocks.0.hook_resid_pre[:]", "input", -1))
        self.n_inputs = len(senders)
        receivers: list[Receiver] = []
        # sender slot of (layer, head) output and of MLP layer
        self.head_sender = torch.zeros(L, H, dtype=torch.long)
        self.mlp_sender = torch.full((L,), -1, dtype=torch.long)
        # receiver slot of (layer, letter, head) input and of MLP input
        self.qkv_receiver = torch.zeros(L, 3, H, dtype=torch.long)
        self.mlp_receiver = torch.full((L,), -1, dtype=torch.long)
        G, group = cfg.kv_heads, cfg.kv_group
        for layer in range(L):
            n_up = len(senders)
            for li, letter in enumerate(QKV):
                heads = H if letter == "q" else G
                first = len(receivers)
                for h in range(heads):
                    receivers.append(
                        Receiver(node_name(f"blocks.{layer}.hook_{letter}_input", h), letter, layer, h, n_up)
                    )
                per_query = torch.arange(H) if letter == "q" else torch.arange(H) // group
                self.qkv_receiver[layer, li] = first + per_query
            for h in range(H):
                self.head_sender[layer, h] = len(senders)
                senders.append(Sender(node_name(f"blocks.{layer}.attn.hook_result", h), "head", layer, h))
            if not cfg.attn_only:
                self.mlp_receiver[layer] = len(receivers)
                mlp_up = n_up if cfg.parallel_attn_mlp else len(senders)
                receivers.append(Receiver(node_name(f"blocks.{layer}.hook_mlp_in"), "mlp", layer, None, mlp_up))
                self.mlp_sender[layer] = len(senders)
                senders.append(Sender(node_name(f"blocks.{layer}.hook_mlp_out"), "mlp", layer))
        self.output_receiver = len(receivers)
        receivers.append(Receiver(node_name(f"blocks.{L - 1}.hook_resid_post"), "out", L, None, len(senders)))
        self.senders = senders
        self.receivers = receivers

        # ADDITION edges, receiver-major.
        add_r, add_s = [], []
        for ri, r in enumerate(receivers):
            add_r += [ri] * r.n_upstream
            add_s += list(range(r.n_upstream))
        self.add_receiver = torch.tensor(add_r, dtype=torch.long)
        self.add_sender = torch.tensor(add_s, dtype=torch.long)
        self.n_add = len(add_r)
        self.dense_index = torch.full((len(receivers), len(senders)), -1, dtype=torch.long)
        self.dense_index[self.add_receiver, self.add_sender] = torch.arange(self.n_add)
        # DIRECT edges, layer-major: q inputs -> q per query head, then k, then v per key/value head.
        self.direct_per_layer = H + 2 * G
        self.n_direct = L * self.direct_per_layer
        self.n_edges = self.n_add + self.n_direct
        # direct_slot[L, letter, h]: the DIRECT edge (index from 0 among DIRECT edges) head h's q/k/v reads
        offsets = torch.tensor([0, H, H + G])
        self.direct_slot = (torch.arange(L)[:, None, None] * self.direct_per_layer + offsets[None, :, None]
                            + torch.stack([torch.arange(H), torch.arange(H) // group, torch.arange(H) // group])[None])

    # ----- names -------------------------------------------------------------------------
    def heads_of(self, letter: str) -> int:
        """How many q (query heads) or k/v (key/value heads) receivers a layer has."""
        return self.cfg.n_heads if letter == "q" else self.cfg.kv_heads

    def qkv_node(self, layer: int, letter: str, head: int) -> str:
        """Node of q/k/v `head` (a key/value head's index for k and v)."""
        return node_name(f"blocks.{layer}.attn.hook_{letter}", head)

    def direct_index(self, layer: int, letter: str, head: int) -> int:
        """Edge id of a DIRECT edge; `head` is a query head for q, a key/value head for k and v."""
        offset = {"q": 0, "k": self.cfg.n_heads, "v": self.cfg.n_heads + self.cfg.kv_heads}[letter]
        return self.n_add + layer * self.direct_per_layer + offset + head

    def direct_from_heads(self, t: torch.Tensor) -> torch.Tensor:
        """Per-query-head DIRECT terms [..., n_layers, 3, n_heads] -> per-edge [..., n_direct]: a
        k or v edge shared by a group gets the sum of its heads' terms (the chain rule through
        the group's shared k/v; the identity without grouped-query attention)."""
        lead = t.shape[:-3]
        out = t.new_zeros(*lead, self.n_direct)
        return out.index_add(-1, self.direct_slot.reshape(-1).to(t.device), t.reshape(*lead, -1))

    @cached_property
    def edge_endpoints(self) -> list[tuple[str, str]]:
        """(sender, receiver) node names of every counted edge, in edge-index order."""
        out = [(self.senders[s].name, self.receivers[r].name) for r, s in zip(self.add_receiver.tolist(), self.add_sender.tolist())]
        for layer in range(self.cfg.n_layers):
            for li, letter in enumerate(QKV):
                for h in range(self.heads_of(letter)):
                    r = int(self.qkv_receiver[layer, li, h * (1 if letter == "q" else self.cfg.kv_group)])
                    out.append((self.receivers[r].name, self.qkv_node(layer, letter, h)))
        return out

    @cached_property
    def edge_names(self) -> list[str]:
        return [edge_name(s, r) for s, r in self.edge_endpoints]

    @cached_property
    def edge_ids(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.edge_names)}

    @cached_property
    def edge_types(self) -> list[str]:
        return ["ADDITION"] * self.n_add + ["DIRECT"] * self.n_direct

    @cached_property
    def placeholder_edges(self) -> list[tuple[str, str]]:
        out = []
        for layer in range(self.cfg.n_layers):
            for h in range(self.cfg.n_heads):
                for letter in QKV:
                    src = h if letter == "q" else h // self.cfg.kv_group
                    out.append((self.qkv_node(layer, letter, src), node_name(f"blocks.{layer}.attn.hook_result", h)))
            if not self.cfg.attn_only:
                out.append((node_name(f"blocks.{layer}.hook_mlp_in"), node_name(f"blocks.{layer}.hook_mlp_out")))
        return out

    @cached_property
    def all_nodes(self) -> list[str]:
        names = {s.name for s in self.senders} | {r.name for r in self.receivers}
        names |= {self.qkv_node(l, x, h) for l in range(self.cfg.n_layers) for x in QKV for h in range(self.heads_of(x))}
        return sorted(names)

    # ----- node-level ROC (docs/scoring.md#node-level-roc) -----------------------------------------------
    @staticmethod
    def roc_node(name: str) -> str | None:
        """ACDC's `filter_nodes`: MLP inputs are dropped (the MLP is its output node); the
        q/k/v input nodes stay separate from q/k/v. We keep our own names for them."""
        return None if ".hook_mlp_in" in name else name

    @cached_property
    def roc_nodes(self) -> list[str]:
        return sorted({n for n in map(self.roc_node, self.all_nodes) if n is not None})

    @cached_property
    def edge_node_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For every counted edge, the roc-node index of its sender and receiver (-1 if dropped)."""
        idx = {n: i for i, n in enumerate(self.roc_nodes)}
        s = [idx.get(self.roc_node(a) or "", -1) for a, _ in self.edge_endpoints]
        r = [idx.get(self.roc_node(b) or "", -1) for _, b in self.edge_endpoints]
        return torch.tensor(s), torch.tensor(r)

    def nodes_touched(self, edge_mask: torch.Tensor) -> torch.Tensor:
        """Boolean [n_roc_nodes]: nodes touching at least one edge in `edge_mask` ([n_edges] bool)."""
        s, r = self.edge_node_index
        out = torch.zeros(len(self.roc_nodes), dtype=torch.bool)
        for ends in (s, r):
            sel = edge_mask & (ends >= 0)
            out[ends[sel]] = True
        return out

    def node_scores(self, edge_scores: torch.Tensor) -> torch.Tensor:
        """A node's score is the largest |score| of the counted edges it touches.

        With this rule, thresholding node scores at t gives exactly the nodes ACDC calls present
        in the circuit of edges with |score| >= t, so node ROC follows from the edge ranking.
        """
        a = edge_scores.detach().abs().to(torch.float64).cpu()
        out = torch.full((len(self.roc_nodes),), float("-inf"), dtype=torch.float64)
        for ends in self.edge_node_index:
            sel = ends >= 0
            out = out.scatter_reduce(0, ends[sel], a[sel], reduce="amax")
        return out

    def edge_mask_from_names(self, pairs: Iterable[tuple[str, str]], where: str = "") -> torch.Tensor:
        """Bool [n_edges] from (sender, receiver) names; unknown names raise naming `where`."""
        mask = torch.zeros(self.n_edges, dtype=torch.bool)
        for s, r in pairs:
            i = self.edge_ids.get(edge_name(s, r))
            if i is None:
                raise ValueError(f"{where}: edge {s!r} -> {r!r} is not an edge of the {self.cfg.name} graph")
            mask[i] = True
        return mask

    def summary(self) -> dict:
        return {
            "model": self.cfg.name,
            "nodes": len(self.all_nodes),
            "roc_nodes": len(self.roc_nodes),
            "edges": self.n_edges,
            "edges_by_type": {"ADDITION": self.n_add, "DIRECT": self.n_direct, "PLACEHOLDER": len(self.placeholder_edges)},
            "senders": len(self.senders),
            "receivers": len(self.receivers),
        }
