"""Shared test settings: CPU, bounded threads, no network."""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """One intra-op thread for modules that opt in (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny nets run faster without OpenMP spinning. Not global: the backdoor probe tests were developed at two."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
