"""Timing suite for the model families after GPT-2 (docs/graph-and-patching.md#model-families):
Pythia (GPT-NeoX: parallel blocks, partial rotary), Qwen2.5, Llama 3 and Gemma-2 (RMSNorm, rotary,
grouped-query attention, SwiGLU), random weights of the published configs, reduced where they
would not fit this machine (`harness.bench.setups.FAMILY_SETUPS`). Per model, in one run: EAP's
and grad-wrong's seconds over one forward + backward (the gradient methods' floor), recorded in
extra_info; asserted only to be positive and finite (speed targets are ratios, never timed
asserts). See conftest.py for the environment knobs."""
import math

import pytest

from harness.bench.setups import FAMILY_SETUPS

SEQ_LEN = 16
BATCH = 8
KEYS = ["forward/no-grad", "forward-backward/activations", "eap/noising", "grad-wrong/logit-diff-mse/activation"]


@pytest.mark.parametrize("model", [pytest.param("pythia-70m", marks=pytest.mark.quick),
                                   *[m for m in FAMILY_SETUPS if m != "pythia-70m"]])
def test_gradient_methods_over_one_forward_backward(benchmark, time_cases, model):
    import pandas as pd

    from harness.bench.suite import lookup

    s, rows = time_cases(model, BATCH, SEQ_LEN, KEYS)
    g = pd.DataFrame(rows)
    fb = float(lookup(g, "forward-backward", "activations"))
    ratios = {"eap_over_fwd_bwd": float(lookup(g, "eap", "noising")) / fb,
              "grad_wrong_over_fwd_bwd": float(lookup(g, "grad-wrong", "logit-diff-mse/activation")) / fb,
              "fwd_bwd_seconds": fb, "edges": s.graph.n_edges}
    benchmark.extra_info.update(ratios)
    print(f"\n{model}: {ratios}")
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())
