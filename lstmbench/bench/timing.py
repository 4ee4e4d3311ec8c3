"""Timing: the one place that reads the clock for every benchmark, tool and test of speed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class Timing:
    median_s: float
    q1_s: float
    q3_s: float
    repeats: int

    @classmethod
    def of(cls, seconds: list[float]) -> "Timing":
        q1, med, q3 = np.percentile(seconds, [25, 50, 75])
        return cls(float(med), float(q1), float(q3), len(seconds))


def timed_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(``fn(*args, **kwargs)``, the wall time of that call in seconds)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def call_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """The wall time of each of ``repeats`` calls, after ``warmup`` untimed ones (JIT, caches);
    for a caller that wants the fastest call rather than the median."""
    for _ in range(warmup):
        fn()
    return [timed_call(fn)[1] for _ in range(repeats)]


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Median and quartiles of ``repeats`` calls after ``warmup`` untimed ones (JIT, caches)."""
    return Timing.of(call_seconds(fn, repeats, warmup))
