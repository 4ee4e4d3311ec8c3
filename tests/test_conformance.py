"""Every registered backend against the NumPy reference, through the public kit."""

import pytest

from lstmbench.testing import conformance_params, run_conformance_case


@pytest.mark.parametrize("backend,check,dtype", conformance_params())
def test_conformance(backend, check, dtype):
    run_conformance_case(backend, check, dtype)
