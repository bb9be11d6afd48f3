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


@pytest.fixture(scope="session", autouse=True)
def cpu_without_fast_bf16():
    """``amp=auto`` takes bf16 on a CPU with oneDNN bf16 kernels: the suite fakes a CPU without them, so every
    expected number holds on any machine (float32). test_precision.py fakes the kernels back to test bf16."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
        yield
