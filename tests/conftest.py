import os

import pytest
import torch

# Two cores here: keep torch from oversubscribing when pytest runs beside other work.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
