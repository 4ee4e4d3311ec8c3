"""Run the conformance checks against a backend: as pytest cases or as a plain call.

A plugin author's whole test file can be::

    import pytest
    from lstmbench.testing import conformance_params, run_conformance_case

    @pytest.mark.parametrize("backend,check,dtype", conformance_params(["mybackend"]))
    def test_conformance(backend, check, dtype):
        run_conformance_case(backend, check, dtype)

or, without pytest: ``lstmbench.testing.check_backend("mybackend")``.
Example counts come from the active Hypothesis settings profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings

from lstmbench.errors import BackendUnavailableError
from lstmbench.protocol import Backend
from lstmbench.registry import backend_names, get_backend
from lstmbench.testing.checks import CHECKS, unsupported_optimizers, unsupported_variants
from lstmbench.testing.strategies import cases

DTYPES = ("float64", "float32")
FEW_EXAMPLES = 5  # for checks about error handling, which do not need many


class CheckSkipped(Exception):
    """The check does not apply here; the message says why."""


@dataclass(frozen=True)
class CheckResult:
    backend: str
    check: str
    dtype: str
    status: str  # "passed", "failed", "skipped"
    detail: str = ""


def _skip_reason(backend: Backend, check: str, dtype: str) -> str | None:
    if dtype not in backend.capabilities.dtypes:
        return f"backend {backend.name!r} declares {dtype} unsupported"
    if check == "declared_unsupported":
        from lstmbench.config import ModelConfig

        if not unsupported_variants(backend, ModelConfig(1, 1, 1, dtype=dtype)) and not unsupported_optimizers(backend):
            return f"backend {backend.name!r} declares every configuration supported"
    return None


def run_check(backend: str | Backend, check: str, dtype: str = "float64", max_examples: int | None = None) -> None:
    """Run one check over Hypothesis-drawn cases; AssertionError on a disagreement,
    CheckSkipped if it does not apply (unavailable backend, unsupported dtype)."""
    if check not in CHECKS:
        raise KeyError(f"unknown check {check!r}; checks: {', '.join(CHECKS)}")
    if isinstance(backend, str):
        try:
            backend = get_backend(backend)
        except BackendUnavailableError as exc:
            raise CheckSkipped(str(exc)) from None
    reason = _skip_reason(backend, check, dtype)
    if reason:
        raise CheckSkipped(reason)
    profile = settings()
    examples = max_examples or profile.max_examples
    if check in ("bad_inputs", "declared_unsupported"):
        examples = min(examples, FEW_EXAMPLES)
    fn = CHECKS[check]

    @settings(profile, max_examples=examples, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases(dtype, backend.capabilities))
    def property_holds(case):
        fn(backend, case)

    property_holds()


def check_backend(backend: str | Backend = "all", checks=None, dtypes=DTYPES, max_examples: int | None = None,
                  raise_on_failure: bool = True) -> list[CheckResult]:
    """Run every check (or ``checks``) on one backend, or on all registered ones with
    ``"all"``. Returns one result per (backend, check, dtype); raises AssertionError
    listing the failures if any and ``raise_on_failure``."""
    targets = backend_names() if backend == "all" else [backend]
    results = []
    for target in targets:
        name = target if isinstance(target, str) else target.name
        for check in checks or CHECKS:
            for dtype in dtypes:
                try:
                    run_check(target, check, dtype, max_examples)
                    results.append(CheckResult(name, check, dtype, "passed"))
                except CheckSkipped as exc:
                    results.append(CheckResult(name, check, dtype, "skipped", str(exc)))
                except AssertionError as exc:
                    results.append(CheckResult(name, check, dtype, "failed", str(exc)))
    failures = [r for r in results if r.status == "failed"]
    if failures and raise_on_failure:
        lines = "\n".join(f"  {r.backend} {r.check} [{r.dtype}]: {r.detail.splitlines()[0]}" for r in failures)
        raise AssertionError(f"{len(failures)} conformance check(s) failed:\n{lines}")
    return results


def conformance_params(backends=None, checks=None, dtypes=DTYPES):
    """pytest parameters (backend, check, dtype) for ``@pytest.mark.parametrize``;
    default: every registered backend, every check, both dtypes."""
    import pytest

    return [
        pytest.param(name, check, dtype, id=f"{name}-{check}-{dtype}")
        for name in (backends or backend_names())
        for check in (checks or CHECKS)
        for dtype in dtypes
    ]


def run_conformance_case(backend: str | Backend, check: str, dtype: str) -> None:
    """Run one case under pytest: a skip becomes pytest.skip with its reason."""
    import pytest

    try:
        run_check(backend, check, dtype)
    except CheckSkipped as exc:
        pytest.skip(str(exc))
