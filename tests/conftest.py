"""Hypothesis profiles: "ci" (bounded, derandomized, for the 2-core CI machine),
"dev" (the default) and "thorough". Choose with HYPOTHESIS_PROFILE=...
JIT compilation happens inside examples, so no profile has a deadline.

The ``cuda`` backend runs in Numba's CUDA simulator here, unless the caller set
NUMBA_ENABLE_CUDASIM itself (NUMBA_ENABLE_CUDASIM=0 on a GPU machine runs the
same tests on the device). It must be set before numba.cuda is first imported."""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=15, derandomize=True, print_blob=True, **common)
settings.register_profile("dev", max_examples=30, **common)
settings.register_profile("thorough", max_examples=300, **common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
