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
from types import SimpleNamespace

import numpy as np

from lstmbench_backends.numba_cuda import MAX_ROWS_PER_BLOCK, kernels

#: rows per recurrence block that plan() can pick: the powers of two up to MAX_ROWS_PER_BLOCK
ROWS_PER_BLOCK = tuple(1 << k for k in range(MAX_ROWS_PER_BLOCK.bit_length()))
#: threads per recurrence block that plan() can pick with at least a warp of hidden units (fewer
#: units, fewer threads: the same code for a smaller block)
RECURRENCE_THREADS = tuple(1 << k for k in range(5, kernels.MAX_RECURRENCE_THREADS.bit_length()))
#: every kernel variant the backend can launch: (factory name, factory arguments after the dtype)
VARIANTS = (
    [("gemm_kernel", tile) for tile in sorted({kernels.gemm_shape(m, n)[0] for m in kernels.GEMM_TILE_SIZES
                                               for n in kernels.GEMM_TILE_SIZES})]  # every tile gemm_shape picks
    + [(f"lstm_{d}_kernel", (rows, threads)) for d in ("forward", "backward") for rows in ROWS_PER_BLOCK
       for threads in RECURRENCE_THREADS]
    + [(name, ()) for name in ("pack_kernel", "loss_kernel", "finish_kernel", "sum_squares_kernel",
                               "adam_kernel", "sgd_kernel", "gather_kernel")]
)
#: the opt-in persistent recurrence (persistent.py): its factories, named with their module
VARIANTS += [(f"persistent.{d}_kernel", (units,)) for d in ("forward", "backward") for units in (1, 2, 4)]
VARIANTS += [("persistent.column_sums_kernel", ())]
#: the stepwise recurrence's cell kernels (stepwise.py; its products are gemm's variants above)
VARIANTS += [(f"stepwise.{d}_cells_kernel", ()) for d in ("forward", "backward")]
#: layer 0's backward sweep with dW_x folded in (kernels.folded_inputs): its DX inputs, 1 .. FOLD_MAX_INPUTS
VARIANTS += [("lstm_backward_kernel", (rows, threads, dx)) for rows in ROWS_PER_BLOCK for threads in RECURRENCE_THREADS
             for dx in range(1, kernels.FOLD_MAX_INPUTS + 1)]


def build(factory: str, dtype, *args):
    """The kernels.Kernel of a VARIANTS entry: ``factory`` is a function of kernels.py, or of
    persistent.py or stepwise.py when named ``persistent.<function>`` or ``stepwise.<function>``."""
    module, _, name = factory.rpartition(".")
    if module in ("persistent", "stepwise"):
        from importlib import import_module

        return getattr(import_module(f"lstmbench_backends.numba_cuda.{module}"), name)(np.dtype(dtype), *args)
    return getattr(kernels, name)(np.dtype(dtype), *args)


#: kernels whose float32 form must be free of float64 instructions (the others add up
#: the loss or the clipping norm in float64 on purpose)
HOT = ("gemm", "lstm_forward", "lstm_backward", "pack_wh", "lstm_forward_persistent", "lstm_backward_persistent",
       "lstm_forward_cells", "lstm_backward_cells")


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


def compile_ptx(kernel, cc: tuple[int, int]) -> str:
    """The PTX of a kernels.Kernel for ``cc``, with its argument types and launch bound. A kernel
    with a grid-wide barrier (persistent.py) makes numba-cuda ask the current device for its
    compute capability, which fails without a GPU: it is told ``cc`` instead, for this call only."""
    from numba import cuda
    from numba.cuda import dispatcher

    asked = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        ptx, _ = cuda.compile_ptx(kernel.py_func, kernel.arg_types, device=False, cc=cc,
                                  launch_bounds=kernel.launch_bound)
    finally:
        dispatcher.get_current_device = asked
    return ptx


def link_ptx(ptx: str, cc: tuple[int, int]) -> tuple[bytes, str]:
    """(cubin, ptxas's verbose log) of one kernel's PTX, through nvJitLink; a grid-wide barrier
    (cudaCGSynchronize) is linked from the CUDA device runtime, as numba-cuda links it."""
    from cuda.bindings import nvjitlink

    handle = nvjitlink.create(2, [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose"])
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
        if "cudaCGSynchronize" in ptx:
            from numba.cuda.cudadrv.libs import get_cudalib

            nvjitlink.add_file(handle, nvjitlink.InputType.LIBRARY, get_cudalib("cudadevrt", static=True))
        nvjitlink.complete(handle)
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
        cubin = bytearray(nvjitlink.get_linked_cubin_size(handle))
        nvjitlink.get_linked_cubin(handle, cubin)
    finally:
        nvjitlink.destroy(handle)
    return bytes(cubin), log.decode(errors="replace")


def ptxas_figures(text: str) -> tuple[int, int]:
    """(registers, spill store + load bytes) from ptxas's verbose log (link_ptx's)."""
    registers = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return registers, spills


def compile_report(cc: tuple[int, int] = (9, 0)) -> list[KernelReport]:
    """One report per (kernel variant, dtype)."""

    if kernels.SIMULATOR:
        raise RuntimeError("the simulator is on (NUMBA_ENABLE_CUDASIM); it compiles nothing")

    reports = []
    for factory, args in VARIANTS:
        for dtype in ("float32", "float64"):
            kernel = build(factory, dtype, *args)
            ptx = compile_ptx(kernel, cc)
            body = ptx[ptx.index(".entry"):]  # instructions, not the mangled names that mention types
            registers, spills = ptxas_figures(link_ptx(ptx, cc)[1])
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
