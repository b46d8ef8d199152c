import os

import pytest
import torch

# Keep CI deterministic and small: two threads, float64 where tests ask for it.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tracr_tasks():
    from harness.tasks import get_task

    return {n: get_task(n) for n in ("tracr-xproportion", "tracr-reverse")}
