"""Fixtures shared by the backend tests."""
import pytest


@pytest.fixture(scope="session")
def triton_aot(tmp_path_factory):
    """Every Triton launch compiled for sm_80 and sm_90, once per test session (about 2 x 120 compiles:
    test_triton_aot.py checks they compile, test_sass_census.py reads the cubins)."""
    from tests.backends.triton_aot import compile_all

    return compile_all(str(tmp_path_factory.mktemp("triton-aot")))
