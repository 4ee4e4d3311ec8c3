"""Run the conformance checks against a backend: as pytest cases or as a plain call.

A plugin author's whole test file can be::

    import pytest
    from lstmbench.testing import conformance_params, run_conformance_case

    @pytest.mark.parametrize("backend,check,dtype", conformance_params(["mybackend"]))
    def test_conformance(backend, check, dtype):
        run_conformance_case(backend, check, dtype)

or, without pytest: ``lstmbench.testing.check_backend("mybackend")``, or from a shell:
``lstmbench check mybackend`` (lstmbench/cli/check.py).
Example counts come from the active Hypothesis settings profile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

try:
    from builtins import BaseExceptionGroup
except ImportError:  # Python 3.10: the backport, a dependency of Hypothesis there
    from exceptiongroup import BaseExceptionGroup

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed

from lstmbench.errors import BackendUnavailableError
from lstmbench.protocol import Backend
from lstmbench.registry import backend_names, get_backend, load_backend
from lstmbench.testing.checks import CHECKS, WorstError, record_errors, unsupported_optimizers, unsupported_variants
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
    # the worst error against the tolerance over every comparison the check made, in
    # every example Hypothesis ran (a failing check: > 1); None: no tolerance comparison
    # (bad_inputs, declared_unsupported, deterministic's exact ones, a skip)
    worst: WorstError | None = None
    seconds: float = 0.0


def _skip_reason(backend: Backend, check: str, dtype: str) -> str | None:
    if dtype not in backend.capabilities.dtypes:
        return f"backend {backend.name!r} declares {dtype} unsupported"
    if check == "sequences" and not backend.capabilities.sequences:
        return f"backend {backend.name!r} does not take lengths or an initial state yet (Capabilities.sequences)"
    if check == "dropout" and not backend.capabilities.dropout:
        return f"backend {backend.name!r} does not train with dropout yet (Capabilities.dropout)"
    if check == "declared_unsupported":
        from lstmbench.config import ModelConfig

        if not unsupported_variants(backend, ModelConfig(1, 1, 1, dtype=dtype)) and not unsupported_optimizers(backend):
            return f"backend {backend.name!r} declares every configuration supported"
    return None


def _known_check(check: str) -> None:
    if check not in CHECKS:
        raise KeyError(f"unknown check {check!r}; checks: {', '.join(CHECKS)}")


def run_check(backend: str | Backend, check: str, dtype: str = "float64", max_examples: int | None = None,
              seed: int | None = None) -> WorstError | None:
    """Run one check over Hypothesis-drawn cases; AssertionError on a disagreement,
    CheckSkipped if it does not apply (unavailable backend, unsupported dtype).
    Returns the worst error against the tolerance it saw (None: no such comparison).
    ``seed`` makes the examples a function of the seed alone: Hypothesis's database of
    earlier failures is then neither replayed nor written."""
    _known_check(check)
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
    reproducible = {} if seed is None else {"database": None}

    @settings(profile, max_examples=examples, deadline=None, **reproducible,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases(dtype, backend.capabilities))
    def property_holds(case):
        fn(backend, case)

    if seed is not None:
        property_holds = hypothesis_seed(seed)(property_holds)
    with record_errors() as recorder:
        property_holds()
    return recorder.worst


def _first_failure(exc: BaseException) -> str:
    """The message of a failure; of the first one when Hypothesis found several distinct ones."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        others = len(exc.exceptions) - 1
        return _first_failure(exc.exceptions[0]) + (f"\n(and {others} other distinct failure(s))" if others else "")
    if isinstance(exc, AssertionError):
        return str(exc)
    return f"raised {type(exc).__name__}: {exc}"  # a crash is a failure too


def check_one(backend: str | Backend, check: str, dtype: str = "float64", max_examples: int | None = None,
              seed: int | None = None) -> CheckResult:
    """Run one check and report instead of raising: passed, failed (the backend disagreed,
    or raised something unexpected) or skipped. An unknown backend or check still raises."""
    _known_check(check)
    name = backend if isinstance(backend, str) else backend.name
    if isinstance(backend, str):
        load_backend(backend)  # UnknownBackendError is the caller's mistake, not a failed check
    start = time.perf_counter()
    # run_check returns the worst error, but a failing one raises: record around it
    with record_errors() as recorder:
        try:
            run_check(backend, check, dtype, max_examples, seed)
            status, detail = "passed", ""
        except CheckSkipped as exc:
            status, detail = "skipped", str(exc)
        except Exception as exc:
            status, detail = "failed", _first_failure(exc)
    return CheckResult(name, check, dtype, status, detail, recorder.worst, time.perf_counter() - start)


def check_backend(backend: str | Backend = "all", checks=None, dtypes=DTYPES, max_examples: int | None = None,
                  raise_on_failure: bool = True, seed: int | None = None) -> list[CheckResult]:
    """Run every check (or ``checks``) on one backend, or on all registered ones with
    ``"all"``. Returns one result per (backend, check, dtype); raises AssertionError
    listing the failures if any and ``raise_on_failure``. A backend that raises something
    unexpected during a check fails that check."""
    for check in checks or CHECKS:
        _known_check(check)
    targets = backend_names() if backend == "all" else [backend]
    results = [check_one(target, check, dtype, max_examples, seed)
               for target in targets for check in checks or CHECKS for dtype in dtypes]
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
