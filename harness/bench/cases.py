"""What is timed: the engine's cost floor, and every registered method's declared timings.

Method rows come from the registry (`MethodSpec.timings(settings)`, one `Timing` per row), so a
newly registered method with timings is benchmarked with no edit here; the floor rows (one
no-grad forward, one forward+backward) are what EAP's cost is judged against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from harness.bench.setups import Setup
from harness.core import objectives
from harness.methods.registry import MethodSpec, Timing, all_methods


def _objective(logits, data) -> torch.Tensor:
    """The scalar the floor differentiates: EAP's objective, the mean answer logit difference, of
    logits at the scored columns (`TaskData.scored`)."""
    scored = data.scored()[1]
    return objectives.evaluate("logit-diff", logits, logits, scored).mean()


def _cols(s: Setup) -> torch.Tensor:
    """The columns every floor row unembeds: the scored ones, as the methods do."""
    return s.data.scored_positions()


def plain_forward(s: Setup):
    with torch.no_grad():
        return s.engine.run(s.data.clean, positions=_cols(s)).logits


def forward_backward(s: Setup, on_phase: Optional[Callable[[str], None]] = None):
    """One forward with autograd and one backward to the input embeddings: gradients at every
    activation (what attribution needs), no weight gradients. The cost floor of EAP's backward.
    `on_phase("forward")` is called between the two (the profile's mark)."""
    emb = s.engine.input_embeddings(s.data.clean).detach().requires_grad_(True)
    obj = _objective(s.engine.run(s.data.clean, input_embeds=emb, positions=_cols(s)).logits, s.data)
    if on_phase:
        on_phase("forward")
    return torch.autograd.grad(obj, emb)[0]


def forward_backward_weights(s: Setup):
    """One forward and one backward to every weight (a training step's gradient work)."""
    from harness.methods.weight_sites import weight_grads

    return weight_grads(s.engine, s.data.clean, lambda lg: _objective(lg, s.data), positions=_cols(s))


@dataclass(frozen=True)
class Case:
    """One timed row. `run(setup)` runs it once. Looping cases (`units`) run under the budget:
    `units(setup)` is the number of patched forwards a full run makes (`upper_bound`: at most)."""

    method: str
    variant: str
    run: Callable[[Setup], Any]
    units: Optional[Callable[[Setup], int]] = None
    upper_bound: bool = False
    sampled: bool = False  # runs on a sample of edges by design (one-edge-per-forward patching)
    source: str = "registry"
    mem_bytes: Optional[Callable[[Setup], int]] = None  # a known large allocation, checked before running
    gradient: bool = False  # a gradient method (compared with batched patching)
    applies: Optional[Callable[[Setup], bool]] = None  # None: every setup; else only where True (no row elsewhere)

    @property
    def key(self) -> str:
        return f"{self.method}/{self.variant}"


_HF: dict = {}


def hf_forward_backward(s: Setup):
    """The floor's forward+backward (same objective, gradients at the token embeddings, the same
    scored columns unembedded) in HF transformers' GPT-2 holding the setup's weights
    (`harness.bench.hf_reference`)."""
    from harness.bench.hf_reference import hf_gpt2, hf_logits

    w = s.engine.w
    if _HF.get("weights") is not w:
        _HF.clear()  # one model at a time (GPT-2 small is ~500 MB)
        _HF.update(weights=w, model=hf_gpt2(w))
    emb = w["embed.W_E"][s.data.clean.to(w.device)].detach().requires_grad_(True)
    obj = _objective(hf_logits(_HF["model"], w, emb, _cols(s)), s.data)
    return torch.autograd.grad(obj, emb)[0]


def _hf_applies(s: Setup) -> bool:
    from harness.bench.hf_reference import hf_applies

    return hf_applies(s.engine.cfg)


FLOOR = [
    Case("forward", "no-grad", plain_forward, source="engine"),
    Case("forward-backward", "activations", forward_backward, source="engine"),
    Case("forward-backward", "weights", forward_backward_weights, source="engine"),
    Case("forward-backward", "hf-gpt2", hf_forward_backward, source="transformers", applies=_hf_applies),
]


def method_case(spec: MethodSpec, t: Timing) -> Case:
    """The row a method's `Timing` declares, run through the registry."""

    accepted = spec.references_for(t.variant)

    def run(s: Setup):
        opts = t.options(s.graph) if callable(t.options) else dict(t.options)
        data = s.data if s.data.ablation in accepted else s.data.with_ablation(accepted[0])
        return spec.run(s.engine, data, t.variant, **opts)

    units = (lambda s: t.patched_forwards(s.graph, s.batch)) if t.patched_forwards else None
    mem = (lambda s: t.memory_bytes(s.engine, s.batch, s.seq_len)) if t.memory_bytes else None
    return Case(spec.name, t.label or t.variant, run, units=units, upper_bound=t.upper_bound, sampled=t.sampled_edges,
                mem_bytes=mem, gradient=spec.gradient)


def cases(settings) -> list:
    """Every timed row: the floor, then each registered method's timings (`settings`: the bench
    settings its `timings` reads), looping methods last."""
    rows = [method_case(spec, t) for spec in all_methods().values() if spec.timings for t in spec.timings(settings)]
    return FLOOR + sorted(rows, key=lambda c: c.units is not None)


def gradient_methods() -> set:
    """Names of the registered gradient methods."""
    return {name for name, spec in all_methods().items() if spec.gradient}
