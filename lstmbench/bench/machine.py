"""The machine a report was measured on: what it is, how busy it was, and its ceilings now."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from lstmbench.protocol import default_threads


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": default_threads(), "python": platform.python_version(),
            "numpy": np.__version__}


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), where the OS reports one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def measure_ceilings(dtype: str, threads: int) -> dict[str, Any]:
    """This machine's ceilings now: the FMA peak of its widest vectors (on one thread and on
    ``threads``), the BLAS matrix-product rate on ``threads`` and which kernel BLAS ran."""
    from lstmbench.bench import peak

    fma = peak.fma_peak(dtype, threads)
    matmul = peak.matmul_peak_gflops(dtype, threads)
    blas = peak.blas_info()
    return {"fma_peak": fma.to_dict() if fma else None, "matmul_peak_gflops": matmul, "blas": blas,
            "blas_restriction": peak.blas_restriction(blas)}
