"""Every registered backend against the NumPy reference, through the public kit.

``cuda`` is left out here: in the simulator it needs fewer examples than the
profile's, and tests/test_cuda_backend.py runs the same kit on it."""

import pytest

from lstmbench.registry import backend_names
from lstmbench.testing import conformance_params, run_conformance_case

BACKENDS = [name for name in backend_names() if name != "cuda"]


@pytest.mark.parametrize("backend,check,dtype", conformance_params(BACKENDS))
def test_conformance(backend, check, dtype):
    run_conformance_case(backend, check, dtype)
