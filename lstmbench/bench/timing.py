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


#: Seconds to wait before a row is timed. Another thread pool of the process keeps its idle
#: workers spinning for a while after its last call (OpenBLAS's: 0.1 to 0.2 s, measured here), and
#: on a 2-core machine a spinning worker takes a core from the backend being timed: the C backend's
#: forward pass on odd-sizes ran 2.7x slower for the first 100 ms after one NumPy product.
SETTLE_SECONDS = 0.3


def settle() -> None:
    """Let other thread pools' idle workers stop spinning (the reference's BLAS after a
    verification, say) before a timing starts."""
    time.sleep(SETTLE_SECONDS)


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
    """Median and quartiles of ``repeats`` calls after ``warmup`` untimed ones (JIT, caches),
    from a settled process (settle)."""
    settle()
    return Timing.of(call_seconds(fn, repeats, warmup))


def time_phases(phases: list[Callable[[], object]], repeats: int, warmup: int = 1) -> list[Timing]:
    """A Timing per phase of a call made of ``phases`` run in order (a training step's forward,
    backward and update, say), each phase timed alone at every one of ``repeats`` runs after
    ``warmup`` untimed ones, from a settled process (settle)."""
    settle()
    for _ in range(warmup):
        for phase in phases:
            phase()
    seconds = [[timed_call(phase)[1] for phase in phases] for _ in range(repeats)]
    return [Timing.of([run[k] for run in seconds]) for k in range(len(phases))]


@dataclass
class Latency:
    """Per-call latency: the median and the 90th percentile over ``samples`` calls, in microseconds."""

    median_us: float
    p90_us: float
    samples: int

    @classmethod
    def of(cls, seconds: list[float]) -> "Latency":
        med, p90 = np.percentile(seconds, [50, 90])
        return cls(float(med) * 1e6, float(p90) * 1e6, len(seconds))
