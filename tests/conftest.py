import os

import pytest
import torch

# One thread: the test models are tiny, and thread start-up costs more than it saves.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tracr_tasks():
    from harness.tasks import get_task

    return {n: get_task(n) for n in ("tracr-xproportion", "tracr-reverse")}
