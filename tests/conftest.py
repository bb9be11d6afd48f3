"""Shared fixtures. Test helpers that build files live in data_fixtures.py and inference_fixtures.py."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP threads competing for cores make runs 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
