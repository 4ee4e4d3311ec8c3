"""Builds the C kernel into two cffi extensions of the same sources.

``lstmbench_backends.c_kernel._lstm_c``: 32-byte vectors in the matrix-product
micro-kernel, hot functions in three target_clones (x86-64-v4, -v3 and a
baseline copy, chosen at load time), so the binary is portable yet uses AVX2/
AVX-512 where the CPU has them. ``..._lstm_c_avx512``: the same with 64-byte
(zmm) vectors, which the backend loads on CPUs with AVX-512 (built on x86-64
only). Bit for bit they compute the same numbers (tests/test_c_backend.py).

setup.py names ``ffibuilder`` and ``ffibuilder_avx512`` in ``cffi_modules``, so
``pip install`` (editable or not) compiles both. They are marked optional:
without a working C compiler the install still succeeds, and the backend's
availability() says what is missing.

LSTMBENCH_C_NATIVE=1 at build time compiles for -march=native instead (local
benchmarking only: the binary may not run on another CPU). OpenMP is used
when the compiler supports -fopenmp; without it the kernel runs on one thread.

Run directly (``python backends/c_kernel/build_ffi.py``) it builds in place,
for quick experiments without pip.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "lstmbench_backends.c_kernel._lstm_c"
MODULE_AVX512 = MODULE + "_avx512"


def _load_sources_module():
    spec = importlib.util.spec_from_file_location("_lstm_c_sources", os.path.join(HERE, "sources.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cdef() -> str:
    """The declarations between the cdef markers of lstm_api.h."""
    with open(os.path.join(HERE, "lstm_api.h")) as f:
        text = f.read()
    return text.split("/* cdef-begin */", 1)[1].split("/* cdef-end */", 1)[0]


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def _supports(flags: list[str]) -> bool:
    """Whether the C compiler accepts ``flags`` for an OpenMP program."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            result = subprocess.run(_compiler() + flags + [src, "-o", os.path.join(tmp, "t")],
                                    capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


NATIVE = os.environ.get("LSTMBENCH_C_NATIVE", "") == "1"
OPENMP = _supports(["-fopenmp"])
CFLAGS = ["-std=c11", "-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-Wno-psabi"]
if NATIVE:
    CFLAGS += ["-march=native", "-DLSTM_NATIVE"]
if OPENMP:
    CFLAGS += ["-fopenmp"]
SOURCE_HASH = _load_sources_module().source_hash(HERE)


def make_builder(c_source: str, vector_bytes: int = 32) -> FFI:
    flags = CFLAGS + [f"-DLSTM_VECTOR_BYTES={vector_bytes}"]
    builder = FFI()
    builder.cdef(_cdef())
    builder.set_source(
        MODULE if vector_bytes == 32 else MODULE_AVX512,
        '#include "lstm_api.h"\n',
        sources=[c_source],
        include_dirs=[HERE],
        define_macros=[("LSTM_SOURCE_HASH", f'"{SOURCE_HASH}"'), ("LSTM_BUILD_FLAGS", f'"{" ".join(flags)}"')],
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"] if OPENMP else [],
        libraries=["m"],
        optional=True,  # no compiler: install anyway; availability() explains
    )
    return builder


# setuptools insists on source paths relative to setup.py (the working directory of the build)
SOURCE = os.path.relpath(os.path.join(HERE, "lstm.c"))
ffibuilder = make_builder(SOURCE)
ffibuilder_avx512 = make_builder(SOURCE, 64)

if __name__ == "__main__":
    # In-place build for experiments: the extensions land next to this file.
    for width in (32, 64):
        try:
            out = make_builder(os.path.join(HERE, "lstm.c"), width).compile(
                tmpdir=os.path.join(HERE, "..", "..", "build", "cffi"), verbose=True)
        except Exception as exc:  # the 64-byte build exists on x86-64 only
            print(f"{width}-byte build skipped: {exc}", file=sys.stderr)
            continue
        target = os.path.join(HERE, os.path.basename(out))
        shutil.move(out, target)
        print(target, file=sys.stderr)
