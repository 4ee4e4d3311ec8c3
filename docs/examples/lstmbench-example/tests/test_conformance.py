"""This package's backends against the NumPy reference, with lstmbench's conformance kit:
python -m pytest tests (or, without pytest: lstmbench check example example-fused)."""

import pytest
from hypothesis import settings

from lstmbench.testing import conformance_params, run_conformance_case

settings.register_profile("example", max_examples=10)  # raise it for a thorough run
settings.load_profile("example")


@pytest.mark.parametrize("backend,check,dtype", conformance_params(["example", "example-fused"]))
def test_conformance(backend, check, dtype):
    run_conformance_case(backend, check, dtype)
