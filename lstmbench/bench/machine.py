"""The machine a report was measured on: what it is, how busy it was, and its ceilings now."""

from __future__ import annotations

import os
import platform
import time
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


#: other processes using this many cores or more while figures were measured are worth a note
BUSY_CORES = 0.25


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process has run since boot, and what the hypervisor took for other guests
    (steal), from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """``with OtherLoad() as load:``, then ``load.cores``: how many cores other processes (and
    other guests of a virtual machine) kept busy on average while the block ran, this process
    and its children left out; None where the system does not say. Unlike the load average, it
    counts only the block's own time and never this process's threads."""

    cores: float | None = None

    def __enter__(self) -> "OtherLoad":
        self._start = (time.monotonic(), _machine_busy_seconds(), _own_cpu_seconds())
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, own0 = self._start
        wall, busy = time.monotonic() - wall0, _machine_busy_seconds()
        if busy is not None and busy0 is not None and wall > 0:
            self.cores = max(0.0, (busy - busy0 - (_own_cpu_seconds() - own0)) / wall)


def busy_note(others: float | None, what: str = "these figures") -> str | None:
    """A warning for figures measured while other processes kept ``others`` cores busy, or None."""
    if others is None or others < BUSY_CORES:
        return None
    return (f"the machine was busy: other processes kept {others:.1f} of its {os.cpu_count()} cores busy on average "
            f"while {what} were measured, so they are slower than on a quiet machine "
            "(threads wait for the ones the system sets aside)")


def measure_ceilings(dtype: str, threads: int) -> dict[str, Any]:
    """This machine's ceilings now: the FMA peak of its widest vectors (on one thread and on
    ``threads``), the BLAS matrix-product rate on ``threads`` and which kernel BLAS ran."""
    from lstmbench.bench import peak

    fma = peak.fma_peak(dtype, threads)
    matmul = peak.matmul_peak_gflops(dtype, threads)
    blas = peak.blas_info()
    return {"fma_peak": fma.to_dict() if fma else None, "matmul_peak_gflops": matmul, "blas": blas,
            "blas_restriction": peak.blas_restriction(blas)}
