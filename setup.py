"""Only the C extensions live here (cffi needs setup.py's cffi_modules): the C backend and the FMA
probe of lstmbench.bench.peak; everything else is in pyproject.toml."""

import platform

from setuptools import setup

C_KERNEL = "backends/c_kernel/build_ffi.py:"
modules = [C_KERNEL + "ffibuilder", "lstmbench/bench/peak/build_probe.py:ffibuilder"]
if platform.machine().lower() in ("x86_64", "amd64"):  # the kernel's 64-byte (AVX-512) build is x86-64 only
    modules.append(C_KERNEL + "ffibuilder_avx512")

setup(cffi_modules=modules)
