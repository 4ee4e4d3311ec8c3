"""The conformance kit: prove a backend computes what the NumPy reference computes.

* :func:`check_backend` runs every check on a backend (or all) and reports;
  :func:`check_one` one check; :func:`record_errors` keeps the worst error against
  the tolerance of the comparisons made inside it (CheckResult.worst);
* :func:`conformance_params` + :func:`run_conformance_case` make pytest cases;
* :mod:`lstmbench.testing.strategies` has the Hypothesis strategies
  (model configs, parameters, batches, optimizers).

Importing this module needs Hypothesis (``pip install lstmbench[dev]``).
"""

from lstmbench.testing.checks import CHECKS, TOLERANCES, Tolerance, WorstError, assert_close, record_errors
from lstmbench.testing.runner import (
    CheckResult,
    CheckSkipped,
    check_backend,
    check_one,
    conformance_params,
    run_check,
    run_conformance_case,
)
from lstmbench.testing.strategies import Case, batches, cases, model_configs, optimizers, parameters

__all__ = [
    "CHECKS",
    "TOLERANCES",
    "Case",
    "CheckResult",
    "CheckSkipped",
    "Tolerance",
    "WorstError",
    "assert_close",
    "batches",
    "cases",
    "check_backend",
    "check_one",
    "conformance_params",
    "model_configs",
    "optimizers",
    "parameters",
    "record_errors",
    "run_check",
    "run_conformance_case",
]
