"""The distributed tests need torch.distributed with gloo; each job runs once per session (see harness.py)."""
import pytest
import torch.distributed as dist

from tests.distributed.harness import Jobs


def pytest_collection_modifyitems(config, items):
    reason = None
    if not dist.is_available():
        reason = "torch.distributed is not available in this torch build"
    elif not dist.is_gloo_available():
        reason = "torch.distributed has no gloo backend in this torch build"
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "tests/distributed/" in item.nodeid.replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def jobs(tmp_path_factory) -> Jobs:
    """Runs a harness job (two gloo ranks) on first use and keeps its results for the session."""
    return Jobs(tmp_path_factory.mktemp("distributed"))
