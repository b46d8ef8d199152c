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

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class LayerQKV:
    """Layer L's q/k/v projection and what the fused paths derive from it, made once per set of
    weights (`Weights.derived`): stacking W_Q, W_K, W_V and laying them out for one product copied
    every layer's weights twice per forward, and the traced backward centred them again (about 5%
    of a traced GPT-2 run).

    W [3, H, D, dh]; b [3, H, dh]; fused [D, 3 H dh] (W as one matrix); gamma, beta [D] or None
    (the ln1 LayerNorm or RMSNorm, when it has weights); const [3, H, dh]: b plus beta's image (the part of
    q/k/v that does not depend on the input); back [3H, dh, D]: the traced backward's weight, each
    receiver's W transposed (gamma-scaled, and centred over d_model under a LayerNorm), laid
    out for the batched product (contiguous: 7% faster than a transposed view)."""

    W: torch.Tensor
    b: torch.Tensor
    fused: torch.Tensor
    gamma: Optional[torch.Tensor]
    beta: Optional[torch.Tensor]
    const: torch.Tensor
    back: torch.Tensor


def layer_qkv(w, L: int) -> LayerQKV:
    """Layer L's `LayerQKV` for weights `w` (a Weights), cached while its tensors are constant."""
    pre = f"blocks.{L}."
    norm = w.cfg.normalization_type
    names = tuple(pre + f"attn.{m}_{x}" for m in "Wb" for x in "QKV")
    if norm == "LN":
        names += (pre + "ln1.w", pre + "ln1.b")
    elif norm == "RMS":
        names += (pre + "ln1.w",)

    def make():
        W = torch.stack([w[pre + "attn.W_Q"], w[pre + "attn.W_K"], w[pre + "attn.W_V"]])
        b = torch.stack([w[pre + "attn.b_Q"], w[pre + "attn.b_K"], w[pre + "attn.b_V"]])
        _, H, D, dh = W.shape
        gamma = w[pre + "ln1.w"] if norm in ("LN", "RMS") else None
        beta = w[pre + "ln1.b"] if norm == "LN" else None
        const = b if beta is None else b + torch.einsum("d,lhde->lhe", beta, W)
        back = W.reshape(3 * H, D, dh)
        if norm is not None:
            if gamma is not None:
                back = back * gamma[:, None]
            if norm != "RMS":  # RMSNorm does not centre
                back = back - back.mean(1, keepdim=True)
        back = back.transpose(1, 2).contiguous()
        return LayerQKV(W, b, W.permute(2, 0, 1, 3).reshape(D, 3 * H * dh), gamma, beta, const, back)

    return w.derived(("qkv", L), names, make)


def fused_qkv(normed: torch.Tensor, layer: LayerQKV, W_pos: Optional[torch.Tensor], with_bias: bool = True) -> torch.Tensor:
    """[R, P, 3, H, dh]: every head's q, k, v from one normalised residual normed [R, P, D], one
    fused product (`layer`: a LayerQKV; with_bias=False: without layer.b). W_pos [P, D]
    (shortformer): positions enter queries and keys only, after the LayerNorm."""
    R, P, D = normed.shape
    _, H, _, dh = layer.W.shape
    if W_pos is None:
        out = (normed @ layer.fused).view(R, P, 3, H, dh)
    else:
        qk = torch.einsum("rpd,lhde->rplhe", normed + W_pos, layer.W[:2])
        v = torch.einsum("rpd,hde->rphe", normed, layer.W[2]).unsqueeze(2)
        out = torch.cat([qk, v], 2)
    return out + layer.b if with_bias else out


class SharedQKV(torch.autograd.Function):
    """x [B, P, 3H, D] (equal along dim 2) -> qkv [3, B, P, H, dh].

    The backward gives receiver j the LayerNorm backward of its own gradient g_j = dq_j W_j^T:
    inv * (centre(gamma g_j) - xhat mean(gamma g_j xhat)); an RMSNorm's is the same without the
    centring (xhat = x inv, no mean taken out, in the forward too). Centring is folded into the weights
    (centre(gamma W_j) over d_model, made once per set of weights: `LayerQKV.back`), the
    per-position scale inv into the [.., d_head] gradient before the product, and mean(gamma g_j xhat) is the inner product of dq_j
    with Z_j = (gamma xhat) W_j, the forward's own projection kept for it, so the [B, P, 3H, D]
    gradient is written by one product and corrected by one pass (the direct form took about ten
    passes over it: half of attn-only-4l's traced backward). It is returned laid out receiver-major
    ([3H, B, P, D] memory), the layout `harness.methods.attribution.contract` reads.
    """

    @staticmethod
    def forward(ctx, x, layer: LayerQKV, W_pos: Optional[torch.Tensor], eps: float, norm: Optional[str], freeze: bool):
        # layer: the weights' constants (`layer_qkv`); W_pos [P, D] (shortformer) or None
        x0 = x[:, :, 0]
        inv = xhat = Z = None
        if norm is None:
            qkv = fused_qkv(x0, layer, W_pos)
        else:
            xc = x0 if norm == "RMS" else x0 - x0.mean(-1, keepdim=True)
            inv = 1.0 / (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            xhat = xc * inv
            scaled = xhat * layer.gamma if layer.gamma is not None else xhat
            Z = fused_qkv(scaled, layer, None, with_bias=False)  # [B, P, 3, H, dh]: (gamma xhat) W
            const = layer.const
            if W_pos is not None:  # positions enter q and k after the LayerNorm
                qk_pos = torch.einsum("pd,lhde->plhe", W_pos, layer.W[:2])
                const = const + torch.cat([qk_pos, qk_pos.new_zeros(qk_pos.shape[0], 1, *qk_pos.shape[2:])], 1)
            qkv = Z + const
        ctx.save_for_backward(inv, xhat)
        ctx.layer, ctx.Z, ctx.norm, ctx.freeze = layer, Z, norm, freeze
        return qkv.permute(2, 0, 1, 3, 4)

    @staticmethod
    def backward(ctx, g_qkv):
        inv, xhat = ctx.saved_tensors
        layer = ctx.layer
        _, B, P, H, dh = g_qkv.shape
        D = layer.W.shape[2]
        g = g_qkv.permute(0, 3, 1, 2, 4).reshape(3 * H, B * P, dh)  # receiver-major
        if ctx.norm is not None:  # layer.back: gamma-scaled, centred over d_model (folded in)
            g = g * inv.reshape(1, B * P, 1)
        G = torch.bmm(g, layer.back)  # [3H, B*P, D]
        if ctx.norm is not None and not ctx.freeze:  # the scale's own derivative
            Z = ctx.Z.permute(2, 3, 0, 1, 4).reshape(3 * H, B * P, dh)
            m = (g * Z).sum(-1, keepdim=True) / D  # mean(gamma g xhat) * inv, per receiver and token
            G.addcmul_(m, xhat.reshape(1, B * P, D), value=-1.0)
        return G.view(3 * H, B, P, D).permute(1, 2, 0, 3), None, None, None, None, None
