"""AtP* (Kramár, Lieberum, Shah, Nanda 2024, "AtP*: An efficient and scalable method for localizing
LLM behaviour to components", arXiv 2403.00745) on ACDC's edge graph.

AtP is EAP's noising estimate (`harness.methods.eap`): the gradient at the clean run times
(source - clean), per edge. AtP* changes it in two ways (docs/methods.md#attention-saturation,
#cancellation):

QK fix (the paper's section 3.1.1). Through a saturated softmax the gradient at a query or key is
near 0 although patching it moves attention a lot. For an edge whose patch changes a head's query
or key, the head's attention pattern is recomputed exactly with the edge patched, and only what
follows the pattern is linearised: score = sum <dL/dA, A_patched - A_clean> over examples, heads'
query and key positions, A the softmax pattern of the clean run and dL/dA its gradient there.
The paper's nodes are one query or key at one position; an edge of ACDC's graph covers every
position at once (so does its patch in `Engine.run`), so here the pattern is recomputed with the
query (or key) changed at every position together:
- DIRECT edge q_input -> q (k_input -> k) of a head: q (k) is the source run's q (k), as the
  engine's patch sets it; the pattern is softmax(q k^T / scale) with the other side clean;
- ADDITION edge sender -> q_input (k_input) of a head: the sender's change (source - clean) is
  added to that receiver's input, which goes through ln1 and W_Q (W_K) exactly (the engine's
  patch does the same), then the exact softmax.
v, MLP and output edges keep AtP's score (the paper fixes queries and keys only). Where what
follows the pattern is linear in it, the fixed score is the exact patched change
(tests/test_atp_star.py checks it against `Engine.run` patching).

GradDrop (the paper's section 3.1.2). A node's direct and indirect effects can cancel in the
total gradient. For each layer l the backward is repeated with the gradient through layer l's
residual contribution dropped (its output held at its clean value), giving AtP+GD_l, and the
estimate is (1 / (L - 1)) sum_l |AtP+GD_l| per prompt pair (the paper's normalisation: the term of
the node's own layer is 0), summed over examples. Here a layer is a block (its heads and its MLP,
the residual contribution attn_out + mlp_out of a sequential block; the paper's Pythia blocks are
parallel), and an edge's estimate is that of its receiver: dropping layer l changes the gradient
at receivers of layers < l, zeroes it at layer l's own receivers and leaves later receivers and
the output unchanged. So an edge into a receiver of layer r gets
(r |AtP| + sum_{l > r} |AtP+GD_l|) / (L - 1), and an edge into the output, which no dropped layer
reaches, gets |AtP| (L terms, all |AtP|, averaged over L: the same mean over the layers that are
not the receiver's own). With one layer there is nothing to drop and the score is |AtP|.
The dropped backward needs no hook in the engine: with layer l held fixed, the gradient at an
earlier receiver is its full gradient minus what reaches it through layer l, and that part is
one vector-Jacobian product from layer l's receiver inputs (their gradients, plus the MLP
input's gradient on its residual path) back to the earlier receivers (`dropped_grads`). With the
QK fix, each AtP+GD_l of a query/key edge is the fixed score with dL/dA taken under that drop.

Scores use the task's ACDC loss metric with the natural sign (`objectives.evaluate`
"logit-diff"), as EAP does; noising only (the paper's AtP: gradient at clean x (noise - clean)).
The paper's definitions were read from its abstract and summaries here, with the combination
(1 / (L - 1)) sum_l |AtP+GD_l| as the unofficial replication github.com/koayon/atp_star writes
its equation 11. Cost: one source run, one traced forward and backward (AtP); GradDrop adds
L - 1 partial backwards (drop l reaches layers < l: about (L - 1) / 2 backwards in all) and
L - 1 contractions over the edges into earlier layers; the QK fix one ln1 per ADDITION query or
key edge and one product of d_model x min(pos, d_head) per head and token (batched per layer,
in chunks of senders), and a softmax per edge. `circuit-bench bench` on random-init GPT-2 at
8 x 16, one thread (medians of 3; one forward+backward 1.08 s): eap noising 2.20 s (2.0x),
qk-fix 4.93 s (4.6x), graddrop 7.84 s (7.3x), atp-star 9.11 s (8.4x).
"""
from __future__ import annotations

import torch

from harness.core import objectives
from harness.core.engine import attention_patterns
from harness.core.references import source_cache
from harness.methods.attribution import contract, differences, traced_run
from harness.methods.registry import Timing, register, task_objective

# elements of one chunk's largest block in the QK fix ([senders, batch, heads, pos, pos] or
# [senders, batch, pos, d_model]); bounds its memory (2^23 float64 elements: 64 MiB)
QK_CHUNK_ELEMENTS = 2**23


# ----- gradients ------------------------------------------------------------------------------------
def _targets(trace) -> list:
    return list(trace.qkv_inputs) + list(trace.mlp_inputs) + [trace.output_input] + list(trace.qkv)


def _unpack(trace, grads) -> dict:
    """Gradients listed as `_targets` -> `attribution.receiver_grads`' dict."""
    nq, nm = len(trace.qkv_inputs), len(trace.mlp_inputs)
    return {"qkv_in": list(grads[:nq]), "mlp_in": list(grads[nq:nq + nm]), "out": grads[nq + nm],
            "qkv": list(grads[nq + nm + 1:])}


def receiver_grads(trace, objective: torch.Tensor, retain_graph: bool = False) -> dict:
    """`harness.methods.attribution.receiver_grads`, keeping the graph when GradDrop backpropagates
    again through it."""
    targets = _targets(trace)
    grads = torch.autograd.grad(objective, targets, allow_unused=True, retain_graph=retain_graph)
    return _unpack(trace, [torch.zeros_like(t) if g is None else g for g, t in zip(grads, targets)])


def dropped_grads(engine, trace, grads: dict, layer: int) -> dict:
    """The receiver gradients (as `receiver_grads`) with block `layer`'s residual contribution
    held at its clean value: no gradient flows through its heads or its MLP.

    Receivers of later layers and the output are unchanged; `layer`'s own receivers get 0; an
    earlier receiver's gradient loses what reached it through the block. The block is entered
    only through its receivers' inputs, which all read the residual before the block (the MLP
    input also reads the block's heads, but paths through them are already counted at their q/k/v
    inputs), so that part is the vector-Jacobian product of c = sum of the block's q/k/v input
    gradients + its MLP input's gradient, from the residual before the block back to every
    earlier receiver: one partial backward from the block's q/k/v inputs (which are that residual,
    expanded) with c as their gradient."""
    cfg = engine.cfg
    G = grads["qkv_in"][layer]
    if not cfg.attn_only:  # the expansion's backward sums the slots: any one slot carries the MLP's part
        G = G.clone()
        G[:, :, 0] += grads["mlp_in"][layer]
    inputs = list(trace.qkv_inputs[:layer]) + list(trace.mlp_inputs[:layer]) + list(trace.qkv[:layer])
    through = torch.autograd.grad(trace.qkv_inputs[layer], inputs, grad_outputs=G, retain_graph=True,
                                  allow_unused=True)
    through = [torch.zeros_like(t) if g is None else g for g, t in zip(through, inputs)]
    nm = 0 if cfg.attn_only else layer
    tq, tm, tv = through[:layer], through[layer:layer + nm], through[layer + nm:]

    def part(name, before):
        full = grads[name]
        return ([full[L] - before[L] for L in range(layer)] + [torch.zeros_like(full[layer])]
                + list(full[layer + 1:]))

    return {"qkv_in": part("qkv_in", tq), "mlp_in": part("mlp_in", tm) if not cfg.attn_only else [],
            "out": grads["out"], "qkv": part("qkv", tv)}


def contract_below(engine, grads: dict, senders: torch.Tensor, d_qkv: torch.Tensor, upto: int) -> torch.Tensor:
    """`attribution.contract(..., per_example=True)` for the edges into receivers of layers < upto
    only ([batch, n_edges], 0 elsewhere): the only edges a drop of layer `upto` changes.
    senders: the sender differences laid out [batch, n_senders, pos * d_model] (once per run)."""
    g, cfg = engine.graph, engine.cfg
    B, n_senders = senders.shape[:2]
    dense = senders.new_zeros(B, len(g.receivers), n_senders)
    for L in range(upto):
        blocks = [(g.qkv_receiver[L].reshape(-1), grads["qkv_in"][L])]
        if not cfg.attn_only:
            blocks.append(([int(g.mlp_receiver[L])], grads["mlp_in"][L].unsqueeze(2)))
        for rows, grad in blocks:
            n_up = g.receivers[int(rows[0])].n_upstream
            G = grad.permute(0, 2, 1, 3).reshape(B, grad.shape[2], -1)
            dense[:, rows, :n_up] = torch.bmm(G, senders[:, :n_up].transpose(1, 2))
    add = dense.reshape(B, -1)[:, (g.add_receiver * n_senders + g.add_sender).to(dense.device)]
    direct = senders.new_zeros(B, cfg.n_layers, 3, cfg.n_heads)
    for L in range(upto):
        direct[:, L] = torch.einsum("xbphe,xbphe->bxh", grads["qkv"][L], d_qkv[L])
    return torch.cat([add, direct.reshape(B, -1)], -1)


def pattern_grads(engine, trace, grads: dict, upto=None) -> list:
    """dL/dA [batch, heads, query pos, key pos] of the attention pattern of every layer (< upto),
    from receiver gradients: a head's output adds into the residual that every later receiver
    reads, so its gradient is the sum of theirs (and of the same layer's MLP input's); then through
    W_O and z = A v."""
    cfg, w = engine.cfg, engine.w
    upto = cfg.n_layers if upto is None else upto
    acc = grads["out"]
    out = [None] * upto
    for L in reversed(range(cfg.n_layers)):
        if not cfg.attn_only:
            acc = acc + grads["mlp_in"][L]
        if L < upto:
            g_z = torch.einsum("bpd,hed->bphe", acc, w[f"blocks.{L}.attn.W_O"])
            out[L] = torch.einsum("bqhe,bkhe->bhqk", g_z, trace.qkv[L][2].detach())
        acc = acc + grads["qkv_in"][L].sum(2)
    return out


# ----- the QK fix -----------------------------------------------------------------------------------
def patterns(engine, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax patterns [..., batch, heads, query, key] of q, k [..., batch, pos, heads, d_head]
    (`harness.core.engine.attention_patterns` of the engine's model)."""
    return attention_patterns(engine.cfg, q, k)


def _normed(engine, layer: int, resid: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """ln1 of resid + change[i] ([n, batch, pos, d_model]; `Engine._norm`), plus the positions in
    shortformer models (they enter queries and keys after the norm, as in `Engine._receiver_qkv`)."""
    normed = engine._norm(resid + change, f"blocks.{layer}.ln1", False)
    if engine.cfg.positional_embedding_type == "shortformer":
        normed = normed + engine.w["pos_embed.W_pos"][: resid.shape[1]]
    return normed


def patched_qk(engine, layer: int, resid: torch.Tensor, change: torch.Tensor):
    """Every head's (q, k) [n, batch, pos, heads, d_head] of layer `layer` when change[i]
    [batch, pos, d_model] is added to the q/k receivers' input resid [batch, pos, d_model]: an
    ADDITION edge into a q_input (k_input) patched, exact through ln1 and W_Q (W_K)."""
    w, pre = engine.w, f"blocks.{layer}."
    normed = _normed(engine, layer, resid, change)
    q = torch.einsum("nbpd,hde->nbphe", normed, w[pre + "attn.W_Q"]) + w[pre + "attn.b_Q"]
    k = torch.einsum("nbpd,hde->nbphe", normed, w[pre + "attn.W_K"]) + w[pre + "attn.b_K"]
    return q, k


def patched_patterns(engine, layer: int, resid: torch.Tensor, change: torch.Tensor, q: torch.Tensor,
                     k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every head's pattern [n, batch, heads, pos, pos] of layer `layer` with its query side (first)
    or its key side (second) read from resid + change[i] (`patched_qk`), the other side the clean
    run's q or k [batch, pos, heads, d_head]. Where pos <= d_head the projection is folded into the
    other side (q'k^T = normed' (W_Q k^T) + b_Q k^T: pos instead of d_head columns per head), the
    same values with fewer products."""
    cfg, w, pre = engine.cfg, engine.w, f"blocks.{layer}."
    n, (B, P, H, dh) = change.shape[0], q.shape
    if P > dh:
        qn, kn = patched_qk(engine, layer, resid, change)
        return patterns(engine, qn, k), patterns(engine, q, kn)
    normed = _normed(engine, layer, resid, change).permute(1, 0, 2, 3).reshape(B, n * P, -1)  # [B, n*P, D]
    out = []
    for W, b, other in ((w[pre + "attn.W_Q"], w[pre + "attn.b_Q"], k), (w[pre + "attn.W_K"], w[pre + "attn.b_K"], q)):
        folded = torch.einsum("hde,bphe->bdhp", W, other).reshape(B, -1, H * P)  # [B, D, H*P]
        bias = torch.einsum("he,bphe->bhp", b, other)  # [B, H, P]
        s = torch.bmm(normed, folded).view(B, n, P, H, P).permute(1, 0, 3, 2, 4) + bias[:, :, None]
        out.append(s)  # [n, B, H, patched side's pos, other side's pos]
    sq, sk = out[0], out[1].transpose(-1, -2)  # scores [n, B, H, query, key]
    if cfg.causal:
        causal = torch.ones(P, P, dtype=torch.bool, device=sq.device).tril()
        sq, sk = sq.masked_fill(~causal, float("-inf")), sk.masked_fill(~causal, float("-inf"))
    return (sq / cfg.scale).softmax(-1), (sk / cfg.scale).softmax(-1)


@torch.no_grad()
def qk_fixed_terms(engine, trace, source, d_senders, g_patterns: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The QK-fixed terms of every query/key edge: (edge ids [m], terms [K, batch, m]) where
    term[j] = sum over heads' positions of g_patterns[L][j] * (A_patched - A_clean) of the edge's
    layer L (g_patterns[L]: [K, batch, heads, pos, pos], one dL/dA per estimate: AtP, then each
    GradDrop drop). Per example: the objective is a batch mean, so the terms add to the score."""
    cfg, g = engine.cfg, engine.graph
    H = cfg.n_heads
    ids, terms = [], []
    for L in range(cfg.n_layers):
        q, k = trace.qkv[L][0].detach(), trace.qkv[L][1].detach()  # [B, P, H, dh]
        A = patterns(engine, q, k)  # [B, H, P, P]
        gA = g_patterns[L]  # [K, B, H, P, P]
        src = source.qkv[L].to(q.device)
        # DIRECT q_input -> q and k_input -> k: that side from the source run
        for li, dA in ((0, patterns(engine, src[0], k) - A), (1, patterns(engine, q, src[1]) - A)):
            terms.append(torch.einsum("kbhqs,bhqs->kbh", gA, dA))
            ids.append(g.n_add + (L * 3 + li) * H + torch.arange(H))
        # ADDITION sender -> q_input / k_input: the sender's change through ln1 and W_Q / W_K
        rows = g.qkv_receiver[L, :2]  # [2, H]
        n_up = g.receivers[int(rows[0, 0])].n_upstream
        resid = trace.qkv_inputs[L][:, :, 0].detach()  # every receiver reads the residual (clean run)
        B, P, D = resid.shape
        step = max(1, QK_CHUNK_ELEMENTS // (B * max(H * P * P, P * D)))
        for a in range(0, n_up, step):
            b = min(n_up, a + step)
            for li, Ap in enumerate(patched_patterns(engine, L, resid, d_senders[a:b], q, k)):
                t = torch.einsum("kbhqs,nbhqs->kbhn", gA, Ap - A)  # [K, B, H, n]
                terms.append(t.reshape(*t.shape[:2], -1))
                ids.append(g.dense_index[rows[li]][:, a:b].reshape(-1))
    return torch.cat(ids), torch.cat(terms, -1)


# ----- the method -----------------------------------------------------------------------------------
def receiver_layers(graph) -> torch.Tensor:
    """[n_edges] the layer of each edge's receiver (n_layers for the output)."""
    add = torch.tensor([r.layer for r in graph.receivers])[graph.add_receiver]
    direct = torch.arange(graph.cfg.n_layers).repeat_interleave(3 * graph.cfg.n_heads)
    return torch.cat([add, direct])


def graddrop_combine(terms: torch.Tensor, layers: torch.Tensor, n_layers: int) -> torch.Tensor:
    """terms [L, batch, n_edges] (0: AtP; l >= 1: AtP+GD_l, read only for edges into layers < l)
    -> [batch, n_edges]: the mean over the layers other than the receiver's own of |AtP+GD_l|
    (|AtP| where l is upstream of the receiver), |AtP| where no layer is left."""
    layers = layers.to(terms.device)
    base = terms[0].abs()
    acc = base * layers.clamp(max=n_layers).to(base.dtype)
    for ell in range(1, n_layers):
        m = layers < ell
        acc[:, m] += terms[ell][:, m].abs()
    count = torch.where(layers < n_layers, n_layers - 1, n_layers).to(base.dtype)
    return torch.where(count > 0, acc / count.clamp(min=1), base)


def atp_star_terms(engine, data, qk_fix: bool = True, grad_drop: bool = True, objective: str = "logit-diff"):
    """[K, batch, n_edges]: per-example AtP terms (K = 1), or with GradDrop each AtP+GD_l
    (index l = 1..L-1; index 0 is AtP), QK-fixed on query/key edges when `qk_fix`. Only edges into
    receivers of layers < l are meaningful in index l."""
    cfg = engine.cfg
    cols, scored = data.scored()
    source = source_cache(engine, data)
    tr = traced_run(engine, data.clean, positions=cols)
    grads = receiver_grads(tr, objectives.evaluate(objective, tr.logits, tr.logits.detach(), scored).mean(),
                           retain_graph=grad_drop and cfg.n_layers > 1)
    d_senders, d_qkv = differences(tr, source)
    drops = range(1, cfg.n_layers) if grad_drop else range(0)
    K = 1 + len(drops)
    terms = d_senders.new_zeros(K, data.n, engine.graph.n_edges)
    terms[0] = contract(engine, grads, d_senders, d_qkv, per_example=True)
    g_pat = None
    if qk_fix:
        B, P, H = data.n, data.clean.shape[1], cfg.n_heads
        g_pat = [d_senders.new_zeros(K, B, H, P, P) for _ in range(cfg.n_layers)]
        with torch.no_grad():
            for L, gA in enumerate(pattern_grads(engine, tr, grads)):
                g_pat[L][0] = gA
    if grad_drop:
        laid = d_senders.permute(1, 0, 2, 3).reshape(data.n, d_senders.shape[0], -1)  # one copy for every drop
    for j, ell in enumerate(drops, start=1):
        gd = dropped_grads(engine, tr, grads, ell)
        terms[j] = contract_below(engine, gd, laid, d_qkv, ell)
        if qk_fix:
            with torch.no_grad():
                for L, gA in enumerate(pattern_grads(engine, tr, gd, upto=ell)):
                    g_pat[L][j] = gA
        del gd
    del grads
    if qk_fix:
        ids, fixed = qk_fixed_terms(engine, tr, source, d_senders, g_pat)
        terms[:, :, ids.to(terms.device)] = fixed
    return terms.detach()


@register(
    "atp-star",
    "AtP* (Kramár et al. 2024): AtP with the QK fix (exact attention pattern for query/key edges) and GradDrop",
    {
        "atp-star": ({"qk_fix": True, "grad_drop": True}, "AtP*: the QK fix and GradDrop"),
        "qk-fix": ({"qk_fix": True, "grad_drop": False},
                   "AtP with the QK fix only: query/key edges' patterns recomputed exactly, linear after the softmax"),
        "graddrop": ({"qk_fix": False, "grad_drop": True},
                     "AtP with GradDrop only: mean over dropped layers of |AtP with one layer's gradient dropped|"),
        "atp": ({"qk_fix": False, "grad_drop": False}, "AtP without either fix (equals eap noising)"),
    },
    default_variants=["atp-star", "qk-fix", "graddrop"],
    references=("resample", "zero"),
    gradient=True,
    per_example=True,
    per_position=("atp",),  # the QK fix recomputes a pattern with every position's q (k) changed at once
    objective=task_objective("logit-diff"),
    timings=lambda bench: [Timing("atp-star"), Timing("qk-fix"), Timing("graddrop")],
    architectures="gpt2-style",
)
def atp_star(engine, data, qk_fix: bool = True, grad_drop: bool = True, objective: str = "logit-diff",
             per_example: bool = False, per_position: bool = False):
    """[n_edges] (per_example: [batch, n_edges]) scores; with GradDrop, magnitudes (sums over
    examples of per-example means of |AtP+GD_l|); otherwise signed first-order changes."""
    if not (qk_fix or grad_drop):  # AtP: EAP noising's own computation, one pass, no per-example block
        cols, scored = data.scored()
        source = source_cache(engine, data)
        tr = traced_run(engine, data.clean, positions=cols)
        grads = receiver_grads(tr, objectives.evaluate(objective, tr.logits, tr.logits.detach(), scored).mean())
        d_senders, d_qkv = differences(tr, source)
        return contract(engine, grads, d_senders, d_qkv, per_example=per_example, per_position=per_position).detach()
    if per_position:
        raise ValueError("the QK fix and GradDrop give no per-position scores (the fix patches every position's query or key at once)")
    terms = atp_star_terms(engine, data, qk_fix, grad_drop, objective)
    if grad_drop:
        out = graddrop_combine(terms, receiver_layers(engine.graph), engine.cfg.n_layers)
    else:
        out = terms[0]
    return out if per_example else out.sum(0)
