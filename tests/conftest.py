import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny workloads: a second thread only adds contention on shared 2-core machines


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
