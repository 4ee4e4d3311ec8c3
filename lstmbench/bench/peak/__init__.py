"""This machine's ceilings, measured in the run that quotes them.

* :func:`fma_peak`: GFLOP/s of independent vector FMA chains with the widest
  vectors the CPU has (512-bit where AVX-512 exists), per core and on the threads
  used: what "percent of peak" is of. A small C probe (fma_probe.c, built with
  the package) runs it.
* :func:`matmul_peak_gflops`: the best matrix product the process can call (NumPy's
  BLAS), and :func:`blas_info` which kernel that BLAS runs (threadpoolctl's
  ``architecture``) and whether an environment variable holds it below the CPU
  (:func:`blas_restriction`), which makes the BLAS rate no ceiling at all.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from lstmbench.bench.timing import call_seconds, settle, timed_call

#: variables that make OpenBLAS pick a kernel other than the one for this CPU
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_VERBOSE_CORETYPE")
#: OpenBLAS kernels (threadpoolctl's "architecture") that use 512-bit vectors
AVX512_KERNELS = ("skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5")


@dataclass(frozen=True)
class FmaPeak:
    isa: str  # "AVX-512", "AVX2+FMA"
    vector_bits: int
    dtype: str
    threads: int
    per_core_gflops: float  # one thread
    gflops: float  # ``threads`` threads

    def to_dict(self) -> dict:
        return asdict(self)


def _probe():
    try:
        from lstmbench.bench.peak import _fma_probe
    except ImportError:
        return None
    return _fma_probe.lib


def widest_vector_bits() -> int:
    """512 with AVX-512, 256 with AVX2+FMA, 0 if unknown (no probe, not x86-64)."""
    lib = _probe()
    return 8 * int(lib.fma_widest_vector_bytes()) if lib else 0


def _best_rate(lib, vector_bytes: int, dtype_size: int, threads: int, seconds: float) -> float:
    iters = 1 << 16
    while True:  # calibrate: about ``seconds`` a run
        _, took = timed_call(lib.fma_probe_gflops, vector_bytes, dtype_size, threads, iters)
        if took > seconds / 4 or iters > 1 << 34:
            break
        iters *= 4
    return max(lib.fma_probe_gflops(vector_bytes, dtype_size, threads, iters) for _ in range(5))


def fma_peak(dtype: str = "float32", threads: int = 1, vector_bits: int | None = None,
             seconds: float = 0.2) -> FmaPeak | None:
    """The FMA peak with ``vector_bits``-wide vectors (default: the widest the CPU has), on
    one thread and on ``threads``; the best of 5 runs of about ``seconds`` each. None
    without the probe or the instructions."""
    bits = vector_bits or widest_vector_bits()
    settle()  # (a ceiling read while another pool's workers spin would flatter every %peak)
    one = fma_rate(dtype, 1, bits, seconds)
    if one is None:
        return None
    many = one if threads == 1 else fma_rate(dtype, threads, bits, seconds)
    return FmaPeak("AVX-512" if bits == 512 else "AVX2+FMA", bits, np.dtype(dtype).name, threads, one, many)


def fma_rate(dtype: str = "float32", threads: int = 1, vector_bits: int | None = None,
             seconds: float = 0.2) -> float | None:
    """GFLOP/s of the FMA probe on ``threads`` threads with ``vector_bits``-wide vectors (default:
    the widest), the best of 5 runs of about ``seconds``; None without the probe or the
    instructions. A short one (``seconds`` = 0.02) is the calibration a same-process ratio uses."""
    lib = _probe()
    bits = vector_bits or widest_vector_bits()
    if lib is None or bits not in (256, 512) or bits > widest_vector_bits():
        return None
    return _best_rate(lib, bits // 8, np.dtype(dtype).itemsize, threads, seconds)


def matmul_peak_gflops(dtype: str = "float32", threads: int | None = None, n: int = 2048) -> float:
    """The process's matrix-product rate: the best of a few n x n products through
    NumPy's BLAS on ``threads`` threads."""
    from threadpoolctl import threadpool_limits

    from lstmbench.protocol import default_threads

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    with threadpool_limits(threads or default_threads(), user_api="blas"):
        seconds = min(call_seconds(lambda: a @ b, repeats=7))  # the fastest one
    return 2 * n**3 / seconds / 1e9


def blas_info() -> list[dict]:
    """threadpoolctl's view of every BLAS in the process: API, version, kernel, threads."""
    import scipy.linalg  # noqa: F401  (SciPy's OpenBLAS, which numba uses, is then loaded too)
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads", "filepath")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info() if lib.get("user_api") == "blas"]


def blas_restriction(libs: list[dict] | None = None) -> str | None:
    """One line if an environment variable holds OpenBLAS below this CPU's widest vectors, else None.
    ``libs``: :func:`blas_info`'s list where the caller has it already (else it is asked)."""
    set_vars = [f"{v}={os.environ[v]}" for v in OPENBLAS_OVERRIDES if os.environ.get(v)]
    if not set_vars or widest_vector_bits() < 512:
        return None
    if libs is None:
        libs = blas_info()
    kernels = sorted({str(lib["architecture"]) for lib in libs if lib["internal_api"] == "openblas"})
    if kernels and all(k.lower() in AVX512_KERNELS for k in kernels):
        return None
    return (f"{', '.join(set_vars)} holds OpenBLAS to its {'/'.join(kernels) or 'chosen'} kernel (no AVX-512) on a "
            "CPU with AVX-512: BLAS rates are not this machine's; unset it for figures")
