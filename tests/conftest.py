"""Hypothesis profiles: "ci" (bounded, derandomized, for the 2-core CI machine),
"dev" (the default) and "thorough". Choose with HYPOTHESIS_PROFILE=...
JIT compilation happens inside examples, so no profile has a deadline."""

import os

from hypothesis import HealthCheck, settings

common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=15, derandomize=True, print_blob=True, **common)
settings.register_profile("dev", max_examples=30, **common)
settings.register_profile("thorough", max_examples=300, **common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
