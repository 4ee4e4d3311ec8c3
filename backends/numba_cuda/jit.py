"""What every kernel module of the ``cuda`` backend shares: whether Numba's CUDA simulator is
on, the numba type of a dtype, and ``kernel``: cuda.jit with on-disk caching and a launch bound,
wrapped in a Kernel that remembers its argument types (tests and tools/cuda_static_cost.py read them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import cuda, float32, float64

try:
    from numba.cuda.core import config as _cuda_config  # the setting numba.cuda itself was imported with
except ImportError:  # pragma: no cover - numba's own (older) numba.cuda
    from numba import config as _cuda_config
SIMULATOR = bool(_cuda_config.ENABLE_CUDASIM)  # Numba's CUDA simulator: Python threads, no GPU


def dtype_of(np_dtype):
    """The numba type of a numpy dtype (float32 or float64)."""
    return float32 if np.dtype(np_dtype) == np.float32 else float64


@dataclass(frozen=True)
class Kernel:
    """A compiled-on-first-launch kernel with what it expects: the numba types of its
    arguments as the backend passes them (tests check every launch against them, and
    inspect.py compiles them for a real GPU) and the most threads per block it is
    built for (its launch bound, which caps the registers the compiler may use)."""

    name: str
    dispatcher: object
    arg_types: tuple
    launch_bound: int

    @property
    def py_func(self):
        return getattr(self.dispatcher, "py_func", None) or self.dispatcher.fn  # the simulator's kernels: .fn


def kernel(launch_bound: int, *arg_types):
    """Decorator: cuda.jit with on-disk caching and the launch bound (where the target takes
    it: the simulator's jit does not), wrapped in a Kernel."""
    opts = {"cache": True}
    if not SIMULATOR:
        opts["launch_bounds"] = launch_bound

    def wrap(fn) -> Kernel:
        return Kernel(fn.__name__, cuda.jit(**opts)(fn), tuple(arg_types), launch_bound)

    return wrap
