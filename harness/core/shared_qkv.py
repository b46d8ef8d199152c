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
    """x [B, P, 3H, D] (equal along dim 2) -> qkv [3, B, P, H, dh]."""

    @staticmethod
    def forward(ctx, x, W, b, gamma, beta, W_pos: Optional[torch.Tensor], eps: float, norm: Optional[str], freeze: bool):
        # W [3, H, D, dh], b [3, H, dh]; gamma, beta [D] (LN), W_pos [P, D] (shortformer) or None
        x0 = x[:, :, 0]
        inv = xhat = None
        if norm is None:
            normed = x0
        else:
            xc = x0 - x0.mean(-1, keepdim=True)
            inv = 1.0 / (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            xhat = xc * inv
            normed = xhat * gamma + beta if norm == "LN" else xhat
        qkv = fused_qkv(normed, W, b, W_pos)
        ctx.save_for_backward(W, gamma if norm == "LN" else None, inv, xhat)
        ctx.norm, ctx.freeze = norm, freeze
        return qkv.permute(2, 0, 1, 3, 4)

    @staticmethod
    def backward(ctx, g_qkv):
        W, gamma, inv, xhat = ctx.saved_tensors
        _, B, P, H, dh = g_qkv.shape
        g = torch.einsum("lbphe,lhde->bplhd", g_qkv, W).reshape(B, P, 3 * H, W.shape[2])  # at each normed input
        if ctx.norm is not None:
            if gamma is not None:
                g = g * gamma
            g = g - g.mean(-1, keepdim=True)
            if not ctx.freeze:  # the scale's own derivative
                xh = xhat.unsqueeze(2)
                g = g - xh * (g * xh).mean(-1, keepdim=True)
            g = g * inv.unsqueeze(2)
        return g, None, None, None, None, None, None, None, None
