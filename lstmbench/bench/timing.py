"""Timing: the one helper every benchmark, tool and test of speed uses."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

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



def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Median and quartiles of ``repeats`` calls after ``warmup`` untimed ones (JIT, caches)."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return Timing.of(seconds)
