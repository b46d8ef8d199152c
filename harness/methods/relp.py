"""RelP: relevance patching (Rezaei Jafari, Eberle, Khakzar & Nanda 2025, arXiv 2508.21258;
NeurIPS 2025 Mechanistic Interpretability Workshop; code github.com/FarnoushRJ/RelP).

Attribution patching (EAP noising here: `harness.methods.eap`) scores an edge u -> v as
dL/dz_v . (z_u(corrupted) - z_u(clean)) at the clean run. RelP keeps that product, the two
forwards and the one backward, but replaces the local gradient dL/dz_v with the propagation
coefficient of Layer-wise Relevance Propagation (LRP): a backward pass in which chosen
non-linearities are handled by LRP rules. In gradient x input form those rules are gradient
modifications (Ali et al. 2022, "XAI for Transformers", arXiv 2202.07304; Achtibat et al. 2024,
AttnLRP, arXiv 2402.05602), and for linear layers LRP-0/epsilon (epsilon -> 0) is the plain
gradient. The rules, each a named `rules` entry here:

- "ln" (LN-rule): LayerNorm's scale 1/sigma is a constant in the backward (its centring and
  affine map stay linear): the engine's `freeze_ln_scale=True`. Every LayerNorm: ln1 before
  each q/k/v, ln2 before each MLP, ln_final.
- "ah" (AH-rule, CP-LRP): the attention pattern is a constant in the backward, so relevance
  flows through the values only; every q and k, and every edge into a q or k input, gets
  relevance 0. Made without touching the engine: every q and k DIRECT edge is patched with
  weight 1 towards the clean run's own q/k (`Engine.run` semantics: q + 1 * (q_clean - q)), the
  same forward values with d(q_used)/dq = 0, so nothing flows into q or k or upstream through
  them; the gradient recorded at the (patched) q and k is then zeroed.
- "identity" (Identity-rule): an element-wise activation (GELU, ReLU) passes relevance through
  unchanged: its local derivative is replaced by act(x) / x (act'(0) at x = 0), a custom
  autograd Function whose forward is the activation itself. For ReLU this is ReLU's own
  derivative, so the rule changes nothing on ReLU models (tracr).
- Half-rule (multiplicative gates, e.g. gated MLPs): no gate exists in the engine's models
  (GPT-2, attn-only, tracr), so it is not implemented; a gated architecture should add it.

Variants: "paper" (LN + AH + Identity, the paper's set for GPT-2-style models), "no-ah" (LN +
Identity: keeps q/k edges scoreable on ACDC's graph, where the AH-rule ties every q/k edge at
0), "ln" (LN-rule alone: EAP with the LayerNorm scale frozen).

Cost: EAP's (one source forward, one traced forward+backward); the AH-rule's forward goes
through the engine's patching path (one more no-grad clean forward for the q/k it pins, and the
per-receiver mixing of a patched run).
"""
from __future__ import annotations

import copy

import torch

from harness.core import objectives
from harness.core.engine import SenderCache
from harness.core.references import source_cache
from harness.methods.attribution import contract, differences, receiver_grads, traced_run
from harness.methods.registry import Timing, register, task_objective

RULES = ("ln", "ah", "identity")


class _IdentityRule(torch.autograd.Function):
    """y = act(x); backward: grad * act(x) / x (the Identity-rule), act'(0) where x == 0."""

    @staticmethod
    def forward(ctx, x, act):
        y = act(x)
        ctx.save_for_backward(x, y)
        ctx.act = act
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        with torch.enable_grad():
            z = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
            (slope0,) = torch.autograd.grad(ctx.act(z), z)
        zero = x == 0
        ratio = torch.where(zero, slope0, y / torch.where(zero, torch.ones_like(x), x))
        return grad * ratio, None


def identity_rule(act):
    """The activation `act` with the Identity-rule's backward."""
    return lambda x: _IdentityRule.apply(x, act)


def qk_pin(engine) -> torch.Tensor:
    """[n_edges]: 1 on every q and k DIRECT edge, 0 elsewhere (the AH-rule's patch)."""
    g, cfg = engine.graph, engine.cfg
    direct = torch.zeros(cfg.n_layers, 3, cfg.n_heads, dtype=engine.w.dtype, device=engine.w.device)
    direct[:, :2] = 1
    return torch.cat([torch.zeros(g.n_add, dtype=direct.dtype, device=direct.device), direct.reshape(-1)])


def relevance_run(engine, tokens, rules, positions=None):
    """A traced clean run whose receiver gradients are RelP's propagation coefficients (`rules`
    applied), and whose logits are the clean run's."""
    unknown = set(rules) - set(RULES)
    if unknown:
        raise KeyError(f"unknown LRP rules {sorted(unknown)}; rules: {', '.join(RULES)}")
    if "identity" in rules and not engine.cfg.attn_only:
        engine = copy.copy(engine)  # the caller's engine keeps its activation
        engine.act_fn = identity_rule(engine.act_fn)
    freeze = "ln" in rules
    if "ah" not in rules:
        return traced_run(engine, tokens, freeze_ln_scale=freeze, positions=positions)
    with torch.no_grad():
        clean = engine.cache(tokens)  # the q/k the pinned run reads (the clean run's own)
    source = SenderCache(clean.senders, clean.qkv)  # senders: read with weight 0, any values do
    return traced_run(engine, tokens, qk_pin(engine), source, freeze_ln_scale=freeze, positions=positions)


@register(
    "relp",
    "relevance patching: EAP with LRP propagation coefficients (LN, attention and Identity rules) for gradients",
    {
        "paper": ({"rules": ("ln", "ah", "identity")}, "LN-rule + AH-rule (attention detached) + Identity-rule, as the paper"),
        "no-ah": ({"rules": ("ln", "identity")}, "LN-rule + Identity-rule; attention keeps its gradient, so q/k edges score"),
        "ln": ({"rules": ("ln",)}, "LN-rule alone: EAP noising with every LayerNorm scale frozen"),
        "paper-abs": ({"rules": ("ln", "ah", "identity"), "aggregate": "abs"},
                      "paper, sum over examples of |per-example score| (cannot cancel)"),
    },
    default_variants=["paper", "no-ah"],
    gradient=True,
    per_example=True,
    per_position=True,
    objective=task_objective("logit-diff"),
    timings=lambda bench: [Timing("paper"), Timing("no-ah")],
    architectures="gpt2-style",
)
def relp(engine, data, rules=("ln", "ah", "identity"), objective="logit-diff", per_example=False, per_position=False):
    cols, scored = data.scored()  # only the scored columns are unembedded
    other = source_cache(engine, data)  # no-grad forward (none under zero ablation)
    tr = relevance_run(engine, data.clean, tuple(rules), positions=cols)
    grads = receiver_grads(tr, objectives.evaluate(objective, tr.logits, tr.logits.detach(), scored).mean())
    if "ah" in rules:  # relevance does not reach q or k under the AH-rule
        grads["qkv"] = [torch.cat([torch.zeros_like(g[:2]), g[2:]]) for g in grads["qkv"]]
    d_senders, d_qkv = differences(tr, other)
    return contract(engine, grads, d_senders, d_qkv, per_example=per_example, per_position=per_position).detach()
