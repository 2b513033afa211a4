"""Shared test set-up: deterministic, quiet, and sized for 2 CPU cores."""

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # Test tensors are tiny: a second intra-op thread only contends (up to 100x slower on a busy 2-core box).
    torch.set_num_threads(1)
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
