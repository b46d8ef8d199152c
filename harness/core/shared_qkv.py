"""q/k/v of one layer in an unpatched traced run, where every receiver reads the same residual.

Attribution needs the gradient at each q/k/v receiver's own input ([batch, pos, 3 x n_heads,
d_model], one copy of the residual per receiver), so a traced run cannot simply normalise the
residual once. But forward, the copies are equal: `SharedQKV` normalises one of them and makes
one fused q/k/v product, and its backward gives every copy the gradient that its own LayerNorm
and projection would (the LayerNorm's backward with the shared statistics). Before, a traced run
normalised all 3 x n_heads copies (13-15% of a GPT-2 forward) and kept each normalised copy for
the backward. Weights are constants here: a run whose weights require grad takes the
per-receiver path.
"""
from __future__ import annotations

from typing import Optional

import torch


def qkv_weights(w, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer L's q, k, v projections as [3, n_heads, d_model, d_head] and biases [3, n_heads, d_head]
    (`w`: a Weights)."""
    pre = f"blocks.{L}.attn."
    W = torch.stack([w[pre + "W_Q"], w[pre + "W_K"], w[pre + "W_V"]])
    b = torch.stack([w[pre + "b_Q"], w[pre + "b_K"], w[pre + "b_V"]])
    return W, b


def fused_qkv(normed: torch.Tensor, W: torch.Tensor, b: torch.Tensor, W_pos: Optional[torch.Tensor]) -> torch.Tensor:
    """[R, P, 3, H, dh]: every head's q, k, v from one normalised residual normed [R, P, D], one
    fused product (W, b from `qkv_weights`). W_pos [P, D] (shortformer): positions enter queries
    and keys only, after the LayerNorm."""
    R, P, D = normed.shape
    H, dh = W.shape[1], W.shape[3]
    if W_pos is None:
        return (normed @ W.permute(2, 0, 1, 3).reshape(D, 3 * H * dh)).view(R, P, 3, H, dh) + b
    qk = torch.einsum("rpd,lhde->rplhe", normed + W_pos, W[:2])
    v = torch.einsum("rpd,hde->rphe", normed, W[2]).unsqueeze(2)
    return torch.cat([qk, v], 2) + b


class SharedQKV(torch.autograd.Function):
    """x [B, P, 3H, D] (equal along dim 2) -> qkv [3, B, P, H, dh].

    The backward gives receiver j the LayerNorm backward of its own gradient g_j = dq_j W_j^T:
    inv * (centre(gamma g_j) - xhat mean(gamma g_j xhat)). Centring is folded into the weights
    (centre(gamma W_j) over d_model, made once per backward), the per-position scale inv into the
    [.., d_head] gradient before the product, and mean(gamma g_j xhat) is the inner product of dq_j
    with Z_j = (gamma xhat) W_j, the forward's own projection kept for it, so the [B, P, 3H, D]
    gradient is written by one product and corrected by one pass (the direct form took about ten
    passes over it: half of attn-only-4l's traced backward). It is returned laid out receiver-major
    ([3H, B, P, D] memory), the layout `harness.methods.attribution.contract` reads.
    """

    @staticmethod
    def forward(ctx, x, W, b, gamma, beta, W_pos: Optional[torch.Tensor], eps: float, norm: Optional[str], freeze: bool):
        # W [3, H, D, dh], b [3, H, dh]; gamma, beta [D] (LN), W_pos [P, D] (shortformer) or None
        x0 = x[:, :, 0]
        inv = xhat = Z = None
        if norm is None:
            qkv = fused_qkv(x0, W, b, W_pos)
        else:
            xc = x0 - x0.mean(-1, keepdim=True)
            inv = 1.0 / (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            xhat = xc * inv
            scaled = xhat * gamma if norm == "LN" else xhat
            Z = fused_qkv(scaled, W, torch.zeros_like(b), None)  # [B, P, 3, H, dh]: (gamma xhat) W
            const = b if norm != "LN" else b + torch.einsum("d,lhde->lhe", beta, W)
            if W_pos is not None:  # positions enter q and k after the LayerNorm
                qk_pos = torch.einsum("pd,lhde->plhe", W_pos, W[:2])
                const = const + torch.cat([qk_pos, qk_pos.new_zeros(qk_pos.shape[0], 1, *qk_pos.shape[2:])], 1)
            qkv = Z + const
        ctx.save_for_backward(W, gamma if norm == "LN" else None, inv, xhat)
        ctx.Z, ctx.norm, ctx.freeze = Z, norm, freeze
        return qkv.permute(2, 0, 1, 3, 4)

    @staticmethod
    def backward(ctx, g_qkv):
        W, gamma, inv, xhat = ctx.saved_tensors
        _, B, P, H, dh = g_qkv.shape
        D = W.shape[2]
        g = g_qkv.permute(0, 3, 1, 2, 4).reshape(3 * H, B * P, dh)  # receiver-major
        Wt = W.reshape(3 * H, D, dh)
        if ctx.norm is not None:
            if gamma is not None:
                Wt = Wt * gamma[:, None]
            Wt = Wt - Wt.mean(1, keepdim=True)  # centring over d_model, folded in
            g = g * inv.reshape(1, B * P, 1)
        G = torch.bmm(g, Wt.transpose(1, 2))  # [3H, B*P, D]
        if ctx.norm is not None and not ctx.freeze:  # the scale's own derivative
            Z = ctx.Z.permute(2, 3, 0, 1, 4).reshape(3 * H, B * P, dh)
            m = (g * Z).sum(-1, keepdim=True) / D  # mean(gamma g xhat) * inv, per receiver and token
            G.addcmul_(m, xhat.reshape(1, B * P, D), value=-1.0)
        return G.view(3 * H, B, P, D).permute(1, 2, 0, 3), None, None, None, None, None, None, None, None
