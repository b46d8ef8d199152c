"""Randomly initialised models of the pretrained tasks' architectures: the reset control offline.

Without the trained weights a pretrained task can still be run on its architecture at the
initialisation its training code starts from, tokenised with the real tokenizer: a method's AUC
there is what it gets from the graph, the data and the model's shape alone (ACDC's reset
networks, `harness.core.reset`, need the trained weights; these do not). Each seed gives one
model; several give the control's interval.

- gpt2: transformers' `GPT2LMHeadModel(GPT2Config())` (GPT-2 small's shape; its own init:
  normal(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layers), zero biases,
  LayerNorm gains 1; unembedding tied to the embedding), read through the bridge and given
  ACDC's processing as the trained model is (`harness.core.loading`).

attn-only-4l and redwood_attn_2l have no initialiser here: they were trained with
TransformerLens's HookedTransformer, which transformer-lens 4 no longer has, and their tasks
need files (a tokenizer, the induction data) no package ships.
"""
from __future__ import annotations

import torch

from harness.core.architectures import architecture
from harness.core.weights import Weights


def _gpt2(seed: int) -> Weights:
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.core.loading import acdc_process, packaged_gpt2_tokenizer, weights_from_hf_gpt2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = GPT2LMHeadModel(GPT2Config()).eval()
    w = weights_from_hf_gpt2(hf, packaged_gpt2_tokenizer(for_bridge=True), "gpt2", {})
    w.provenance["source"] = f"random init: transformers GPT2LMHeadModel(GPT2Config()), torch seed {seed}"
    return acdc_process(w)


INITIALISERS = {"gpt2": _gpt2}


def can_initialise(model_name: str) -> bool:
    """Whether a random-init model of `model_name` can be built here (its initialiser and the
    files it needs)."""
    if model_name != "gpt2":
        return model_name in INITIALISERS
    from harness.core.loading import packaged_gpt2_files

    return packaged_gpt2_files() is not None


def initialised_weights(model_name: str, seed: int, device="cpu", dtype=torch.float32) -> Weights:
    """A randomly initialised `model_name` (see the module docstring), the same for a seed, with
    the real architecture's config, so the same graph as the trained model."""
    if model_name not in INITIALISERS:
        raise KeyError(f"no random initialisation known for {model_name!r}; known: {', '.join(INITIALISERS)}")
    w = INITIALISERS[model_name](seed)
    arch = architecture(model_name)
    for f in ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx", "act_fn", "attn_only"):
        if getattr(w.cfg, f) != getattr(arch, f):
            raise ValueError(f"{model_name}: initialised model's {f} {getattr(w.cfg, f)!r} is not the architecture's "
                             f"{getattr(arch, f)!r}")
    return w.to(device, dtype)
