"""Compile every kernel of the ``cuda`` backend for a real GPU, without one, and report
what the machine code will be like: registers, spills, float64 instructions, local memory.

The simulator runs the kernels as Python, so it cannot see what NVVM and ptxas
make of them. This compiles each kernel variant the backend launches, with the
argument types it passes (``Kernel.arg_types``) and its launch bound, to PTX
(numba-cuda's NVVM) and then to machine code (nvJitLink's ptxas), and reads:

* ``f64``: float64 instructions in the PTX. A float32 kernel of the hot path
  (the products, the recurrence) must have none: one stray float64 literal or
  accumulator would run at a fraction of the float32 rate;
* ``local``: loads and stores of local memory in the PTX: the register blocks
  (``cuda.local.array``) must have been promoted to registers;
* ``registers`` and ``spill`` bytes from ptxas, for the target ``cc``.

Needs numba-cuda with NVVM and nvJitLink (``pip install 'numba-cuda[cu13]'``),
not a GPU, and the simulator off. ``python -m lstmbench_backends.numba_cuda.inspect``
prints the table.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import numpy as np

from lstmbench_backends.numba_cuda import MAX_ROWS_PER_BLOCK, kernels

#: rows per recurrence block that plan() can pick: the powers of two up to MAX_ROWS_PER_BLOCK
ROWS_PER_BLOCK = tuple(1 << k for k in range(MAX_ROWS_PER_BLOCK.bit_length()))
#: every kernel variant the backend can launch: (factory name, factory arguments after the dtype)
VARIANTS = (
    [("gemm_kernel", (bm, bn)) for bm in kernels.GEMM_TILE_SIZES for bn in kernels.GEMM_TILE_SIZES]
    + [(f"lstm_{d}_kernel", (rows,)) for d in ("forward", "backward") for rows in ROWS_PER_BLOCK]
    + [(name, ()) for name in ("transpose_kernel", "loss_kernel", "finish_kernel", "sum_squares_kernel",
                               "adam_kernel", "sgd_kernel", "gather_kernel")]
)
#: kernels whose float32 form must be free of float64 instructions (the others add up
#: the loss or the clipping norm in float64 on purpose)
HOT = ("gemm", "lstm_forward", "lstm_backward", "transpose_wh")


@dataclass(frozen=True)
class KernelReport:
    kernel: str
    variant: str
    dtype: str
    launch_bound: int  # most threads per block
    registers: int
    spill_bytes: int
    f64_instructions: int
    local_accesses: int

    @property
    def hot(self) -> bool:
        return self.kernel in HOT


def link_ptx(ptx: str, cc: tuple[int, int]) -> tuple[bytes, str]:
    """(cubin, ptxas's verbose log) of one kernel's PTX, through nvJitLink."""
    from cuda.bindings import nvjitlink

    handle = nvjitlink.create(2, [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose"])
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
        nvjitlink.complete(handle)
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
        cubin = bytearray(nvjitlink.get_linked_cubin_size(handle))
        nvjitlink.get_linked_cubin(handle, cubin)
    finally:
        nvjitlink.destroy(handle)
    return bytes(cubin), log.decode(errors="replace")


def _ptxas_info(ptx: str, cc: tuple[int, int]) -> tuple[int, int]:
    """(registers, spill store + load bytes) from ptxas, through nvJitLink."""
    text = link_ptx(ptx, cc)[1]
    registers = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return registers, spills


def compile_report(cc: tuple[int, int] = (9, 0)) -> list[KernelReport]:
    """One report per (kernel variant, dtype)."""
    from numba import cuda

    if kernels.SIMULATOR:
        raise RuntimeError("the simulator is on (NUMBA_ENABLE_CUDASIM); it compiles nothing")

    reports = []
    for factory, args in VARIANTS:
        for dtype in ("float32", "float64"):
            kernel = getattr(kernels, factory)(np.dtype(dtype), *args)
            ptx, _ = cuda.compile_ptx(kernel.py_func, kernel.arg_types, device=False, cc=cc,
                                      launch_bounds=kernel.launch_bound)
            body = ptx[ptx.index(".entry"):]  # instructions, not the mangled names that mention types
            registers, spills = _ptxas_info(ptx, cc)
            reports.append(KernelReport(kernel.name, ",".join(map(str, args)) or "-", dtype, kernel.launch_bound,
                                        registers, spills,
                                        len(re.findall(r"^\s*[\w.]+\.f64\b", body, re.M)),
                                        len(re.findall(r"\b(?:ld|st)\.local\b", body))))
    return reports


def format_report(reports: list[KernelReport], cc: tuple[int, int]) -> str:
    lines = [f"kernels compiled for sm_{cc[0]}{cc[1]} (numba-cuda, NVVM, ptxas via nvJitLink)",
             f"{'kernel':<15} {'variant':<8} {'dtype':<8} {'threads':>7} {'registers':>9} {'spill B':>8} "
             f"{'f64 ops':>8} {'local ld/st':>11}"]
    for r in reports:
        lines.append(f"{r.kernel:<15} {r.variant:<8} {r.dtype:<8} {r.launch_bound:>7} {r.registers:>9} "
                     f"{r.spill_bytes:>8} "
                     f"{r.f64_instructions:>8} {r.local_accesses:>11}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cc = tuple(int(p) for p in argv[0].split(".")) if argv else (9, 0)
    print(format_report(compile_report(cc), cc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
