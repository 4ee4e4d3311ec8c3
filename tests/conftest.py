"""Hypothesis profiles: "ci" (bounded, derandomized, for the 2-core CI machine),
"dev" (the default) and "thorough". Choose with HYPOTHESIS_PROFILE=...
JIT compilation happens inside examples, so no profile has a deadline.

The ``cuda`` backend runs in Numba's CUDA simulator here, unless the caller set
NUMBA_ENABLE_CUDASIM itself (NUMBA_ENABLE_CUDASIM=0 on a GPU machine runs the
same tests on the device). It must be set before numba.cuda is first imported."""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=15, derandomize=True, print_blob=True, **common)
settings.register_profile("dev", max_examples=30, **common)
settings.register_profile("thorough", max_examples=300, **common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.fixture(scope="session")
def broken_copy_maker():
    """docs/examples/make_broken_copy.py as a module: the one definition of the example
    plugin's broken copy (tests/test_plugin.py, tests/test_check_command.py)."""
    spec = importlib.util.spec_from_file_location("make_broken_copy", EXAMPLES / "make_broken_copy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def unsettled_timings(monkeypatch):
    """No test reads a time, so none waits for other thread pools to idle before timing
    (lstmbench.bench.timing.settle; tests/test_bench.py checks that timings do call it)."""
    monkeypatch.setattr("lstmbench.bench.timing.SETTLE_SECONDS", 0.0)


@pytest.fixture(scope="module")
def quick_thread_switches():
    """For the cuda backend's tests (pytestmark = usefixtures(...)): the simulator's block manager
    polls its CUDA threads (Python threads) in a loop that holds the GIL; with Python's default
    5 ms switch interval every syncthreads() waits for those switches. 0.1 ms makes the
    simulator about 4x faster."""
    import sys

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(previous)


@pytest.fixture
def cuda_backend():
    """A fresh cuda backend (no cached workspaces), which must be able to run here: fail, never
    skip, since numba-cuda comes with the dev extra."""
    from lstmbench_backends.numba_cuda import NumbaCuda

    fresh = NumbaCuda()
    ok, why = fresh.availability()
    assert ok, why
    return fresh
