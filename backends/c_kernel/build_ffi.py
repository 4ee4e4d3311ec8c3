"""Builds the C kernel into the cffi extension ``lstmbench_backends.c_kernel._lstm_c``.

setup.py names this file in ``cffi_modules``, so ``pip install`` (editable or
not) compiles it. The extension is marked optional: without a working C
compiler the install still succeeds, and the backend's availability() says
what is missing.

Flags: C11, -O3; the hot functions carry target_clones (x86-64-v4, -v3 and a
baseline copy, chosen at load time), so the binary is portable yet uses AVX2/
AVX-512 where the CPU has them. LSTMBENCH_C_NATIVE=1 at build time compiles
for -march=native instead (local benchmarking only: the binary may not run on
another CPU). OpenMP is used when the compiler supports -fopenmp; without it
the kernel runs on one thread.

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
VECTOR_BYTES = os.environ.get("LSTMBENCH_C_VECTOR_BYTES", "32")  # 64: zmm micro-kernel, native builds only
OPENMP = _supports(["-fopenmp"])
CFLAGS = ["-std=c11", "-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-Wno-psabi"]
if NATIVE:
    CFLAGS += ["-march=native", "-DLSTM_NATIVE"]
if VECTOR_BYTES != "32":
    if not NATIVE or VECTOR_BYTES not in ("16", "64"):
        raise SystemExit("LSTMBENCH_C_VECTOR_BYTES=16 or 64 needs LSTMBENCH_C_NATIVE=1")
    CFLAGS += [f"-DLSTM_VECTOR_BYTES={VECTOR_BYTES}"]
if OPENMP:
    CFLAGS += ["-fopenmp"]
BUILD_INFO = " ".join(CFLAGS)
SOURCE_HASH = _load_sources_module().source_hash(HERE)



def make_builder(c_source: str) -> FFI:
    builder = FFI()
    builder.cdef(_cdef())
    builder.set_source(
        MODULE,
        '#include "lstm_api.h"\n',
        sources=[c_source],
        include_dirs=[HERE],
        define_macros=[("LSTM_SOURCE_HASH", f'"{SOURCE_HASH}"'), ("LSTM_BUILD_FLAGS", f'"{BUILD_INFO}"')],
        extra_compile_args=CFLAGS,
        extra_link_args=["-fopenmp"] if OPENMP else [],
        libraries=["m"],
        optional=True,  # no compiler: install anyway; availability() explains
    )
    return builder


# setuptools insists on source paths relative to setup.py (the working directory of the build)
ffibuilder = make_builder(os.path.relpath(os.path.join(HERE, "lstm.c")))

if __name__ == "__main__":
    # In-place build for experiments: the extension lands next to this file.
    out = make_builder(os.path.join(HERE, "lstm.c")).compile(tmpdir=os.path.join(HERE, "..", "..", "build", "cffi"), verbose=True)
    target = os.path.join(HERE, os.path.basename(out))
    shutil.move(out, target)
    print(target, file=sys.stderr)
