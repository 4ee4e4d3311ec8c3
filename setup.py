"""Only the C extension lives here (cffi needs setup.py's cffi_modules); everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["backends/c_kernel/build_ffi.py:ffibuilder"])
