"""Builds the FMA probe (fma_probe.c) into the cffi extension ``lstmbench.bench.peak._fma_probe``.

setup.py names this file in ``cffi_modules`` next to the C backend's build. The
extension is optional: without a compiler lstmbench installs anyway and
``lstmbench.bench.peak.fma_peak`` returns None (the probe is not built).
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

#: the probe's functions (fma_probe.c), declared once for cffi and for the C wrapper
CDEF = """
int64_t fma_widest_vector_bytes(void);
double fma_probe_gflops(int64_t vector_bytes, int64_t dtype_size, int64_t threads, int64_t iters);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "lstmbench.bench.peak._fma_probe",
    "#include <stdint.h>\n" + CDEF,
    sources=[os.path.relpath(os.path.join(HERE, "fma_probe.c"))],
    extra_compile_args=["-std=c11", "-O2", "-fopenmp"],
    extra_link_args=["-fopenmp"],
    optional=True,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "..", "..", "build", "cffi"), verbose=True)
