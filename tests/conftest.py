import contextlib
import socket

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


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache, HF_HUB_OFFLINE=1 (also in huggingface_hub's frozen constants) and
    every socket connection refused: any network use fails loudly."""
    import huggingface_hub.constants as hc

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("CIRCUIT_BENCH_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))

    def refuse(*a, **k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return cache


@pytest.fixture(scope="session")
def xproportion_model():
    """(engine, data) of tracr-xproportion's compiled model (float32, as its task loads it)."""
    from harness.core.engine import Engine
    from harness.tasks import get_task

    task = get_task("tracr-xproportion")
    return Engine(task.load_model()), task.data()


@contextlib.contextmanager
def tasks_restored():
    """The task registry as it was, after the block: tasks registered inside (programs, the
    suite) do not outlive it (other tests list every task)."""
    from harness.tasks import TASKS

    saved = dict(TASKS)
    try:
        yield
    finally:
        TASKS.clear()
        TASKS.update(saved)


@pytest.fixture
def restore_tasks():
    with tasks_restored():
        yield
