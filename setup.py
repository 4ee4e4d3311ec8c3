"""Only the C extensions live here (cffi needs setup.py's cffi_modules): the C backend and the FMA
probe of lstmbench.peak; everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["backends/c_kernel/build_ffi.py:ffibuilder", "lstmbench/peak/build_probe.py:ffibuilder"])
