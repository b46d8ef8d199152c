"""Weight-gradient sites for `grad-wrong`: score edges through dL/dW instead of dL/d(activation).

weight-node: ||dL/dW|| per node, from autograd on a copy of the weights. Edge rule:
  - ADDITION edge s -> r into a head's q/k/v input: that head's ||dL/dW_Q|| (W_K, W_V);
    into an MLP input: ||dL/dW_in||;
  - ADDITION edge s -> output: the SENDER's output weight, ||dL/dW_O[h]|| for a head,
    ||dL/dW_out|| for an MLP, ||dL/dW_E|| / ||dL/dW_pos|| for the token / position embedding
    (the root of their sum of squares for a merged input node). The output has no per-receiver
    weight (W_U is shared by every edge into it, so it would tie them all);
  - DIRECT edge q_input -> q: ||dL/dW_Q|| of that head (likewise k, v).

weight-edge: a receiver's weight gradient splits exactly over its senders. Receiver r reads
x_r = sum_s out_s + c_r (c_r: the attention b_O of earlier layers) through a LayerNorm whose scale
sigma, frozen at its value, makes LN linear: LN(x) = sum_s gamma*center(out_s)/sigma
+ (gamma*center(c_r)/sigma + beta). With y = LN(x) W + b and g = dL/dy,
    dL/dW = sum_{b,p} LN(x)^T g = sum_s share_s + share_const,
    share_s = sum_{b,p} (gamma*center(out_s)/sigma)^T g.
W is W_Q[h] / W_K[h] / W_V[h] (q/k/v inputs), W_in (MLP inputs) or W_U (the output). An
ADDITION edge scores ||share_s||_F; a DIRECT edge carries the whole dL/dW_Q[h] (sum of shares
plus the constant share). The split holds for the forward value of sigma whether or not the
backward pass freezes it; `freeze_ln_scale` only changes g (and is on by default for these
sites, the premise of the decomposition).

weight-edge-taylor: <share_s, W>. Since <share_s, W> = sum_{b,p} (gamma*center(out_s)/sigma) W . g
= <out_s, dL/dx_r> when dL/dx_r is the frozen-scale gradient (centering is a symmetric
projection), it equals the `activation` site (gradient x activation, zero reference) on every
ADDITION edge when both use frozen LN scale, and always on models without LayerNorm. On a DIRECT
edge it is <dL/dW_Q, W_Q> = sum (q - b_Q) . dL/dq: the activation site minus the bias term.

No share is formed (`weight_edge_scores`): the output receiver's shares alone are
[n_senders, d_model, d_vocab], 45 GiB on GPT-2. With A_s = lin(out_s) over the N tokens,
||share_s||^2 = ||A_s^T g||^2 = <A_s A_s^T, g g^T>, two [N, N] Gram matrices, and
<share_s, W> = <out_s, lin^T(g W^T)>, one [N, d_model] product per receiver. `iter_shares` forms
the shares themselves: the reference the scores are tested against on small models.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.engine import Engine
from harness.core.weights import Weights


# working memory of one block of senders in `weight_edge_scores` (their normalised outputs and
# Gram matrices, or their shares under the direct route), so the sites' memory does not grow with
# the vocabulary or the number of senders
SHARE_BLOCK_BYTES = 2**28


def weights_with_grad(w: Weights) -> Weights:
    """A copy of the weights whose float tensors are leaves requiring grad."""
    params = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in w.params.items()}
    return Weights(w.cfg, params, dict(w.provenance))


def weight_edge_bytes(engine, batch: int, seq_len: int) -> int:
    """What the weight-edge sites allocate beside the traced run: the stacked sender outputs
    [n_senders, tokens, d_model], one block of senders (`SHARE_BLOCK_BYTES`), and a q/k/v group's
    token Gram matrices [3 n_heads, tokens, tokens] or Taylor products [3 n_heads, tokens, d_model]."""
    cfg, g = engine.cfg, engine.graph
    item = torch.finfo(engine.w.dtype).bits // 8
    N, R = batch * seq_len, 3 * cfg.n_heads
    return item * (len(g.senders) * N * cfg.d_model + R * N * max(N, cfg.d_model)) + SHARE_BLOCK_BYTES


def weight_grads(engine: Engine, tokens, loss_fn, freeze_ln_scale=False, positions=None) -> dict:
    """dL/dW for every parameter: loss_fn(logits) -> scalar, on a copy of the weights; `positions`:
    the columns unembedded (`Engine.run`), default all."""
    w = weights_with_grad(engine.w)
    eng = Engine(w, engine.graph)
    loss = loss_fn(eng.run(tokens, freeze_ln_scale=freeze_ln_scale, positions=positions).logits)
    names = [k for k, v in w.params.items() if v.requires_grad]
    grads = torch.autograd.grad(loss, [w.params[k] for k in names], allow_unused=True)
    return {k: (torch.zeros_like(w.params[k]) if g is None else g) for k, g in zip(names, grads)}


def weight_node_scores(engine: Engine, dW: dict) -> torch.Tensor:
    """[n_edges] by the weight-node rule in the module docstring."""
    g, cfg = engine.graph, engine.cfg
    n = lambda t: t.detach().double().norm()  # noqa: E731
    recv = torch.zeros(len(g.receivers), dtype=torch.float64)
    send = torch.zeros(len(g.senders), dtype=torch.float64)
    direct = torch.zeros(cfg.n_layers, 3, cfg.n_heads, dtype=torch.float64)
    for L in range(cfg.n_layers):
        p = f"blocks.{L}."
        for li, X in enumerate("QKV"):
            for h in range(cfg.n_heads):
                direct[L, li, h] = n(dW[p + f"attn.W_{X}"][h])
                recv[int(g.qkv_receiver[L, li, h])] = direct[L, li, h]
        for h in range(cfg.n_heads):
            send[int(g.head_sender[L, h])] = n(dW[p + "attn.W_O"][h])
        if not cfg.attn_only:
            recv[int(g.mlp_receiver[L])] = n(dW[p + "mlp.W_in"])
            send[int(g.mlp_sender[L])] = n(dW[p + "mlp.W_out"])
    e, pos = n(dW["embed.W_E"]), n(dW["pos_embed.W_pos"])
    if cfg.split_embed:
        send[0], send[1] = e, pos
    else:
        send[0] = e if cfg.positional_embedding_type == "shortformer" else (e**2 + pos**2).sqrt()
    scores = recv[g.add_receiver]
    to_out = g.add_receiver == g.output_receiver
    scores[to_out] = send[g.add_sender[to_out]]
    return torch.cat([scores, direct.reshape(-1)])


@dataclass
class Share:
    """One receiver's weight-gradient split: dL/dW = shares.sum(0) + const."""

    receiver: int
    param: str  # e.g. "blocks.1.attn.W_Q"
    head: int | None  # index into the param's head dimension, or None
    W: torch.Tensor  # [d_model, e]
    shares: torch.Tensor  # [n_upstream, d_model, e], sender order
    const: torch.Tensor  # [d_model, e]
    edge_ids: torch.Tensor  # [n_upstream] ADDITION edge ids
    direct_id: int | None  # the DIRECT edge carrying W (q/k/v receivers)


def _ln_adjoint(engine: Engine, x: torch.Tensor, prefix: str):
    """(inv [N, 1], gamma [d] or 1.0) of the frozen-scale LayerNorm at `x` [N, d]: its linear
    part is v -> center(v) * inv * gamma (identity without LayerNorm)."""
    t = engine.cfg.normalization_type
    if t is None:
        return None, 1.0
    xc = x - x.mean(-1, keepdim=True)
    inv = 1.0 / (xc.pow(2).mean(-1, keepdim=True) + engine.cfg.eps).sqrt()
    return inv, (engine.w[prefix + ".w"] if t == "LN" else 1.0)


def _lin(v: torch.Tensor, inv, gamma) -> torch.Tensor:
    """The frozen LayerNorm's linear part on [..., N, d] (self-adjoint up to where inv and gamma
    multiply: <lin(v), u> = <v, center(u * inv * gamma)>)."""
    if inv is None:
        return v
    return (v - v.mean(-1, keepdim=True)) * inv * gamma


def _frozen_ln(engine: Engine, x: torch.Tensor, prefix: str):
    """(lin, beta): LN(x) = lin(x) + beta with the scale frozen at its value for x; `lin`
    applies to any [..., batch, pos, d_model] tensor."""
    inv, gamma = _ln_adjoint(engine, x, prefix)
    beta = engine.w[prefix + ".b"] if engine.cfg.normalization_type == "LN" else 0.0
    return (lambda v: _lin(v, inv, gamma)), beta


def _site_grads(engine: Engine, trace, loss):
    """(g_qkv per layer [3, B, P, H, d_head], g at each MLP's output [B, P, D], g at the logits):
    one backward of `loss` from an unpatched traced run."""
    cfg, g = engine.cfg, engine.graph
    L_ = cfg.n_layers
    mlp_out = [trace.senders[int(g.mlp_sender[L])] for L in range(L_)] if not cfg.attn_only else []
    wrt = list(trace.qkv) + mlp_out + [trace.logits]
    gr = torch.autograd.grad(loss, wrt, allow_unused=True)
    gr = [torch.zeros_like(t) if x is None else x for x, t in zip(gr, wrt)]
    return gr[:L_], gr[L_ : L_ + len(mlp_out)], gr[-1]


def _mlp_pre_grad(engine: Engine, L: int, normed: torch.Tensor, g_out: torch.Tensor) -> torch.Tensor:
    """The gradient at layer L's MLP pre-activation, from the gradient g_out at its output and its
    LayerNorm's output `normed` (any [..., D] shape)."""
    w, p = engine.w, f"blocks.{L}."
    pre = (normed @ w[p + "mlp.W_in"] + w[p + "mlp.b_in"]).requires_grad_(True)
    with torch.enable_grad():
        out = engine.act_fn(pre) @ w[p + "mlp.W_out"] + w[p + "mlp.b_out"]
        return torch.autograd.grad(out, pre, g_out)[0]


def iter_shares(engine: Engine, trace, loss: torch.Tensor):
    """Yield a `Share` for every receiver of an unpatched traced run (`record=True`); the run's
    `freeze_ln_scale` decides the gradients g, the split itself is exact either way. The
    materialised reference for `weight_edge_scores` (the output's shares are
    [n_senders, d_model, d_vocab]: small models only)."""
    cfg, g, w = engine.cfg, engine.graph, engine.w
    L_, H = cfg.n_layers, cfg.n_heads
    g_qkv, g_mlp_out, g_logits = _site_grads(engine, trace, loss)
    S = torch.stack([s.detach() for s in trace.senders])  # [F, B, P, D]
    b_O = [w[f"blocks.{L}.attn.b_O"] for L in range(L_)]
    B, P = S.shape[1], S.shape[2]

    def split(r, x, prefix, const_vec, extra, W, grad, param, head, direct_id, cols=None):
        lin, beta = _frozen_ln(engine, x.detach(), prefix)
        n_up = g.receivers[r].n_upstream
        c_const = lin(const_vec.expand(B, x.shape[1], -1)) + beta + extra
        S_up = S[:n_up] if cols is None else S[:n_up, :, cols]  # cols: the unembedded positions
        shares = torch.einsum("nbpd,bpe->nde", lin(S_up), grad)
        const = torch.einsum("bpd,bpe->de", c_const, grad)
        return Share(r, param, head, W, shares, const, g.dense_index[r, :n_up], direct_id)

    zero = S.new_zeros(cfg.d_model)
    for L in range(L_):
        p = f"blocks.{L}."
        c = sum(b_O[:L], zero)
        for li, X in enumerate("QKV"):
            extra = 0.0
            if cfg.positional_embedding_type == "shortformer" and X != "V":
                extra = w["pos_embed.W_pos"][:P]  # added after LN to q/k inputs
            for h in range(H):
                j = li * H + h
                yield split(int(g.qkv_receiver[L, li, h]), trace.qkv_inputs[L][:, :, j], p + "ln1", c, extra,
                            w[p + f"attn.W_{X}"][h], g_qkv[L][li, :, :, h], p + f"attn.W_{X}", h,
                            g.direct_index(L, "qkv"[li], h))
        if not cfg.attn_only:
            xm = trace.mlp_inputs[L].detach()
            lin, beta = _frozen_ln(engine, xm, p + "ln2")
            g_pre = _mlp_pre_grad(engine, L, lin(xm) + beta, g_mlp_out[L])
            yield split(int(g.mlp_receiver[L]), xm, p + "ln2", sum(b_O[: L + 1], zero), 0.0, w[p + "mlp.W_in"],
                        g_pre, p + "mlp.W_in", None, None)
    cols = trace.positions
    out_x = trace.output_input if cols is None else trace.output_input[:, cols]
    yield split(g.output_receiver, out_x, "ln_final", sum(b_O, zero), 0.0, w["unembed.W_U"], g_logits,
                "unembed.W_U", None, None, cols)


def group_share_values(S: torch.Tensor, inv, gamma, G: torch.Tensor, W: torch.Tensor, taylor: bool,
                       block_bytes: int = SHARE_BLOCK_BYTES, route: str | None = None) -> torch.Tensor:
    """[n_senders, R]: ||share_{s,r}||_F (taylor: <share_{s,r}, W_r>) for R receivers that read
    the same LayerNorm input, share_{s,r} = lin(S_s)^T G_r, without forming any share.

    S: [n_senders, N, d] sender outputs over N tokens; G: [R, N, e] gradients at the receivers'
    projections y = LN(x) W; W: [R, d, e]. Taylor: <lin(S_s)^T G_r, W_r> = <S_s, lin^T(G_r W_r^T)>,
    one [N, d] product per receiver. Norm: ||A^T G||^2 = <A A^T, G G^T> over token pairs (the Gram
    route, N^2 d per sender) or ||A^T G|| itself (the direct route, N d e per sender); the cheaper
    one runs (`route` forces "gram" or "direct"), over blocks of senders of `block_bytes`.
    """
    n, N, d = S.shape
    R, e = G.shape[0], G.shape[2]
    item = S.element_size()
    if N == 0:  # no gradient reaches these receivers
        return S.new_zeros(n, R)
    if taylor:
        H = G @ W.transpose(1, 2)  # [R, N, d]
        if inv is not None:
            H = H * inv * gamma
            H = H - H.mean(-1, keepdim=True)
        return S.reshape(n, -1) @ H.reshape(R, -1).T
    if route is None:
        route = "gram" if n * N * N * d + R * N * N * e + n * R * N * N <= n * R * N * d * e else "direct"
    out = S.new_zeros(n, R)
    if route == "gram":
        M = (G @ G.transpose(1, 2)).reshape(R, -1)  # [R, N*N]
        k = max(1, block_bytes // (item * N * (N + d)))
        for a in range(0, n, k):
            A = _lin(S[a : a + k], inv, gamma)
            K = A @ A.transpose(1, 2)  # [k, N, N]
            out[a : a + k] = (K.reshape(K.shape[0], -1) @ M.T).clamp_min(0).sqrt()
    elif route == "direct":
        k = max(1, block_bytes // (item * d * (N + e)))
        for a in range(0, n, k):
            A = _lin(S[a : a + k], inv, gamma)
            for r in range(R):
                out[a : a + k, r] = torch.einsum("knd,ne->kde", A, G[r]).reshape(A.shape[0], -1).norm(dim=1)
    else:
        raise ValueError(f"route must be 'gram' or 'direct', not {route!r}")
    return out


@dataclass
class ShareGroup:
    """Receivers that read one LayerNorm input, and what their shares factor into."""

    receivers: list  # receiver ids, in the order of G's first axis
    n_up: int  # senders upstream of all of them
    tokens: torch.Tensor | None  # [N'] token rows where some receiver has a nonzero gradient (None: all)
    inv: torch.Tensor | None  # [N', 1] frozen LayerNorm scale (None: no LayerNorm)
    gamma: object  # [d_model] LayerNorm weight, or 1.0
    G: torch.Tensor  # [R, N', e] gradients at the receivers' projections
    W: torch.Tensor  # [R, d_model, e]


@dataclass
class ShareFactors:
    """What weight-edge scores read from traced runs: sender outputs over the tokens, the receiver
    groups, and each DIRECT edge's whole dL/dW. Factors of runs over disjoint examples whose
    losses add up to the batch's concatenate over tokens (`cat`): the shares, and so their
    norms, are then the batch's."""

    senders: torch.Tensor  # [n_senders, N, d_model]
    groups: list
    direct_ids: list  # per q/k/v group: [3 n_heads] DIRECT edge ids
    direct_grads: list  # per q/k/v group: [3 n_heads, d_model, d_head] dL/dW_Q/K/V
    direct_W: list

    @staticmethod
    def cat(parts: list) -> "ShareFactors":
        if len(parts) == 1:
            return parts[0]
        offsets, n = [], 0
        for f in parts:
            offsets.append(n)
            n += f.senders.shape[1]
        groups = []
        for gs in zip(*(f.groups for f in parts)):
            g0 = gs[0]
            inv = None if g0.inv is None else torch.cat([g.inv for g in gs])
            tokens = None
            if any(g.tokens is not None for g in gs):
                tokens = torch.cat([(torch.arange(f.senders.shape[1], device=f.senders.device) if g.tokens is None else g.tokens) + o
                                    for g, f, o in zip(gs, parts, offsets)])
            groups.append(ShareGroup(g0.receivers, g0.n_up, tokens, inv, g0.gamma, torch.cat([g.G for g in gs], 1), g0.W))
        return ShareFactors(torch.cat([f.senders for f in parts], 1), groups, parts[0].direct_ids,
                            [sum(ds) for ds in zip(*(f.direct_grads for f in parts))], parts[0].direct_W)

    def scores(self, graph, taylor: bool, block_bytes: int = SHARE_BLOCK_BYTES, route: str | None = None) -> torch.Tensor:
        """[n_edges] float64, as `weight_edge_scores` describes."""
        out = torch.zeros(graph.n_edges, dtype=torch.float64)
        for grp in self.groups:
            S = self.senders[: grp.n_up] if grp.tokens is None else self.senders[: grp.n_up, grp.tokens]
            vals = group_share_values(S, grp.inv, grp.gamma, grp.G, grp.W, taylor, block_bytes, route)
            for j, r in enumerate(grp.receivers):
                out[graph.dense_index[r, : grp.n_up]] = vals[:, j].detach().double().cpu()
        for ids, full, W in zip(self.direct_ids, self.direct_grads, self.direct_W):
            vals = (full * W).sum((1, 2)) if taylor else full.flatten(1).norm(dim=1)
            out[ids] = vals.detach().double().cpu()
        return out


def share_factors(engine: Engine, trace, loss) -> ShareFactors:
    """The factors of an unpatched traced run's shares under `loss` (one backward). Every q/k/v
    receiver of a layer reads the same residual in an unpatched run, so a layer's
    3 x n_heads receivers are one group."""
    cfg, g, w = engine.cfg, engine.graph, engine.w
    L_, H = cfg.n_layers, cfg.n_heads
    g_qkv, g_mlp_out, g_logits = _site_grads(engine, trace, loss)
    S = torch.stack([s.detach() for s in trace.senders])  # [F, B, P, D]
    F_, B, P, D = S.shape
    groups, direct_ids, direct_grads, direct_W = [], [], [], []

    def group(receivers, x, prefix, G, W, rows=None):
        """x [N', D] and G [R, N', e] at token rows `rows` [N'] (None: all N tokens)."""
        inv, gamma = _ln_adjoint(engine, x, prefix)
        keep = G.ne(0).any(-1).any(0)  # tokens no gradient reaches drop out
        if rows is None and bool(keep.all()):
            kept_G, kept_inv, tokens = G, inv, None
        else:
            at = keep.nonzero().squeeze(1)
            kept_G, kept_inv = G[:, at], None if inv is None else inv[at]
            tokens = at if rows is None else rows[at]
        groups.append(ShareGroup(receivers, g.receivers[receivers[0]].n_upstream, tokens, kept_inv, gamma,
                                 kept_G.detach(), W))
        return inv, gamma  # over x's tokens

    for L in range(L_):
        p = f"blocks.{L}."
        x = trace.qkv_inputs[L][:, :, 0].detach().reshape(B * P, D)
        recv = [int(g.qkv_receiver[L, li, h]) for li in range(3) for h in range(H)]
        G = g_qkv[L].permute(0, 3, 1, 2, 4).reshape(3 * H, B * P, -1)  # [3H, N, d_head], q heads, k, v
        W = torch.stack([w[p + f"attn.W_{X}"][h] for X in "QKV" for h in range(H)])
        inv, gamma = group(recv, x, p + "ln1", G, W)
        # DIRECT edges: the whole dL/dW_X[h] = LN(x)^T g (plus W_pos after LN for shortformer q/k)
        Z = _lin(x, inv, gamma) + (w[p + "ln1.b"] if cfg.normalization_type == "LN" else 0.0)
        full = []
        for li, X in enumerate("QKV"):
            Zx = Z + w["pos_embed.W_pos"][:P].repeat(B, 1) if cfg.positional_embedding_type == "shortformer" and X != "V" else Z
            full.append(torch.einsum("nd,hne->hde", Zx, G[li * H : (li + 1) * H]).detach())
        direct_ids.append(torch.tensor([g.direct_index(L, "qkv"[li], h) for li in range(3) for h in range(H)]))
        direct_grads.append(torch.cat(full))
        direct_W.append(W)
        if not cfg.attn_only:
            xm = trace.mlp_inputs[L].detach().reshape(B * P, D)
            lin, beta = _frozen_ln(engine, xm, p + "ln2")
            g_pre = _mlp_pre_grad(engine, L, lin(xm) + beta, g_mlp_out[L].reshape(B * P, D))
            group([int(g.mlp_receiver[L])], xm, p + "ln2", g_pre[None], w[p + "mlp.W_in"][None])
    cols = torch.arange(P) if trace.positions is None else trace.positions.cpu()  # the unembedded positions
    rows = (torch.arange(B)[:, None] * P + cols[None]).flatten()  # their tokens among the B * P
    group([g.output_receiver], trace.output_input.detach()[:, cols.to(S.device)].reshape(len(rows), D), "ln_final",
          g_logits.reshape(1, len(rows), -1), w["unembed.W_U"][None], rows.to(S.device))
    return ShareFactors(S.reshape(F_, B * P, D), groups, direct_ids, direct_grads, direct_W)


def weight_edge_scores(engine: Engine, trace, loss, taylor: bool, block_bytes: int = SHARE_BLOCK_BYTES,
                       route: str | None = None) -> torch.Tensor:
    """[n_edges]: ||share_s|| (taylor: <share_s, W>) per ADDITION edge; DIRECT edges the whole
    dL/dW of their head's q/k/v (its norm, or <dL/dW, W>). Equal to reducing `iter_shares`, but
    no share is formed (`group_share_values`)."""
    f = share_factors(engine, trace, loss)
    return f.scores(engine.graph, taylor, block_bytes, route)
