"""Where all-edge EAP spends its time, phase by phase, next to its floor, so a missed target says
where the time goes.

It times the registered eap itself (its `on_phase` marks), so the profile cannot drift from the
method. (Its first use found `attribution.contract` spending 85% of its time copying the sender
block inside einsum, 41-50% of EAP's floor on GPT-2; contract now reads the senders in place,
one matrix product per receiver group.)
"""
from __future__ import annotations

import statistics

from harness.bench.cases import forward_backward, plain_forward
from harness.bench.setups import Setup
from harness.methods.registry import get_method


def eap_breakdown(s: Setup, repeats: int = 3) -> dict:
    """phase -> median seconds over `repeats` (after one warm-up) of all-edge EAP (noising), in
    order: eap's phases (cache_forward, traced_forward, backward, stack_and_difference, contract),
    then the parts of its floor measured in the same loop (floor_no_grad_forward, floor_forward,
    floor_backward)."""
    eap, clk = get_method("eap"), s.clock
    runs = []
    for _ in range(repeats + 1):  # the first one warms up
        s.engine.arm()
        marks = []
        clk.start()
        eap.run(s.engine, s.data, "noising", on_phase=lambda name: marks.append((name, clk.mark())))
        plain_forward(s)
        marks.append(("floor_no_grad_forward", clk.mark()))
        forward_backward(s, on_phase=lambda _: marks.append(("floor_forward", clk.mark())))
        end, _ = clk.stop()
        marks.append(("floor_backward", end))
        t = [0.0] + [clk.elapsed(m) for _, m in marks]
        runs.append({name: b - a for (name, _), a, b in zip(marks, t, t[1:])})
    runs = runs[1:]
    return {p: statistics.median(r[p] for r in runs) for p in runs[0]}
