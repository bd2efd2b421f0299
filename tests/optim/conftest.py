"""Fixtures of the optimizer tests.

`one_thread`: the contract tests step a model of 277 parameters, where one thread is the fast
setting. On 2 busy cores torch's OpenMP regions spin for their partner thread: a conv forward +
backward of tests/models.py took 20 ms with 2 threads and 0.2 ms with 1 (measured while other builds
ran). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`.
"""
import pytest
import torch


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
