import os

import pytest
import torch

# One thread: the test models are tiny, and thread start-up costs more than it saves.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tracr_tasks():
    from harness.tasks import get_task

    return {n: get_task(n) for n in ("tracr-xproportion", "tracr-reverse")}


def random_hf_gpt2(config_kwargs: dict, dtype):
    """A seeded random HF GPT-2 with randomised biases and LayerNorms and weights scaled x4
    (HF's init leaves biases 0 and LN at (1, 0), which would make weight folding trivial)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(**config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(hf_cfg)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, 0.1)
                elif ".ln_" in name:
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                else:
                    p.mul_(4.0)
    return hf.eval().to(dtype), hf_cfg
