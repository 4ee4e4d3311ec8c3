"""A static cost model of the ``cuda`` backend's kernels, measured without a GPU.

    python tools/cuda_static_cost.py [--json] [--arch sm_90] [--dtype float32] [--hidden 512]
                                     [--kernel lstm_forward] [--mix] [--sass DIR]

Compiles every kernel variant the backend can launch (``inspect.VARIANTS`` of
``lstmbench_backends.numba_cuda.inspect``, with the argument types and launch bound the
backend uses) for sm_90 and sm_80: numba-cuda to PTX, nvJitLink's ptxas to a cubin, and
``nvdisasm`` (``pip install nvidia-cuda-nvdisasm``) to SASS. Per kernel it reports, for
H in {256, 512, 1024} and both dtypes:

* ``registers`` and ``spills`` (spill store + load bytes) from ptxas;
* ``shared_memory``: bytes per block, ptxas's static figure (for sm_90 it has 1 KiB more in
  every kernel that uses shared memory, for sm_80 not) plus the dynamic bytes of the launch;
* ``blocks`` and ``threads``: the launch in a training step of the benchmark model (D=1,
  O=1, one layer, many-to-one MSE, Adam; ``lstmbench.bench.workloads``) at B=128, T=64, on
  the card of the arch (sm_90: an H100 SXM, 132 SMs; sm_80: an A100, 108 SMs; 48 KiB of
  shared memory per block, the default without opt-in);
* ``loop_instructions_per_fma``: the SASS instructions of the innermost loop divided by its
  FFMA count (DFMA for float64 kernels); null for a kernel without such a loop.

The launches are the backend's own: a child process runs one ``train_step`` in Numba's CUDA
simulator with ``_launch`` replaced by a recorder (nothing runs) and the device limits of the
card, so the plan (rows per block, tiles, grids) comes from the backend's code, not from a
copy of it. A variant launched several times with different shapes (the GEMM) gets one row
per launch, named with its M x N x K; a variant the step does not launch at that shape gets
one row with null blocks and threads and its static shared memory only. The kernels take H,
B and T as arguments, so a variant's registers and loop do not depend on H; which variant
runs (rows per block, tile) and its grid do.

The innermost loop, read from the SASS of the kernel's entry function (not the subroutines
ptxas adds, such as ``__cuda_sm20_div_s64``): every ``BRA`` whose target is at or before
its own address closes a loop, the address range [target, branch] (branches back to one
target merge into the widest range). Of the loops with at least one FMA of the kernel's
dtype, the candidates are the innermost ones: those that contain no other loop with FMAs.
Of the candidates, the loops of a product (no MUFU: their FMAs are multiply-adds of the
source, not the expansion of an exp, a tanh, a reciprocal or a square root) if there is
one, else all of them; of those, the one with the most FMAs (the first in address order on
a tie). So the forward recurrence's W_h loop wins over its gate loop, which can have more
FMAs (exp and tanh) among MUFU, float and branch instructions, and an unrolled main loop
wins over its remainder loop; the optimizer update, whose loops all hold a square root and
a division, keeps its loop with the most FMAs. The count is static: every instruction in
the range once, including cold paths the compiler placed inside it and any inner loop
without FMAs (once, not per trip); a ``CALL`` counts as one instruction. It measures how lean the code around the FMAs is, not cycles.

``--mix`` adds each variant's loop, by kind of instruction (integer and address arithmetic,
memory, FMA, other floating point, control); ``--sass DIR`` writes each variant's SASS there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: arch -> (compute capability, the card whose launch limits the plan uses, its SMs)
ARCHS = {"sm_90": ((9, 0), "H100 SXM (modelled)", 132), "sm_80": ((8, 0), "A100 (modelled)", 108)}
DTYPES = ("float32", "float64")
HIDDEN = (256, 512, 1024)
BATCH, STEPS = 128, 64  # the goal shape
FMA_OPCODE = {"float32": "FFMA", "float64": "DFMA"}
KEYS = ("kernel", "dtype", "hidden", "arch", "registers", "spills", "shared_memory", "blocks", "threads",
        "loop_instructions_per_fma")

# -- reading SASS ------------------------------------------------------------------------------

SECTION = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
ENTRY = re.compile(r"^\s*\.other\s+([^,\s]+)\s*,\s*@\"STO_CUDA_ENTRY")
LABEL = re.compile(r"^([.\w$]+):\s*$")
# /*0150*/  [@!P0]  OPCODE operands ;   (predicates: P0-P6, PT, uniform UP0-UP6)
INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(?:@!?U?P(?:T|\d+)\s+)?([A-Z][A-Z0-9_.]*)([^;]*)")
TARGET = re.compile(r"`\(([^)]+)\)")


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers: IMAD.WIDE.U32
    target: int | None = None  # a branch's resolved target address

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


@dataclass(frozen=True)
class Loop:
    start: int  # address of the first instruction (the backward branch's target)
    end: int  # address of the last backward branch to it
    opcodes: tuple[str, ...]  # every instruction in [start, end], in order

    @property
    def instructions(self) -> int:
        return len(self.opcodes)

    def fmas(self, fma_opcode: str) -> int:
        return sum(op.split(".")[0] == fma_opcode for op in self.opcodes)

    def contains(self, other: Loop) -> bool:
        return self is not other and self.start <= other.start and other.end <= self.end


def parse_sass(text: str) -> tuple[dict[str, list[Instruction]], list[str]]:
    """nvdisasm's text -> ({function: its instructions, branch targets resolved}, entry functions)."""
    functions: dict[str, list[tuple[int, str, str | None]]] = {}
    labels: dict[str, dict[str, int]] = {}
    entries, current, pending = [], None, []
    for line in text.splitlines():
        if m := SECTION.match(line):
            current, pending = m.group(1), []
            functions[current], labels[current] = [], {}
        elif m := ENTRY.match(line):
            entries.append(m.group(1))
        elif current is None:
            continue
        elif m := LABEL.match(line.strip()):
            pending.append(m.group(1))  # it names the next instruction's address
        elif m := INSTRUCTION.match(line):
            address = int(m.group(1), 16)
            for name in pending:
                labels[current][name] = address
            pending = []
            target = TARGET.search(m.group(3))
            functions[current].append((address, m.group(2), target.group(1) if target else None))
    resolved = {name: [Instruction(a, op, labels[name].get(t) if t else None) for a, op, t in body]
                for name, body in functions.items()}
    return resolved, entries


def find_loops(instructions: list[Instruction]) -> list[Loop]:
    """One loop per backward branch target: [target, the last branch back to it]."""
    ends: dict[int, int] = {}
    for ins in instructions:
        if ins.base == "BRA" and ins.target is not None and ins.target <= ins.address:
            ends[ins.target] = max(ends.get(ins.target, ins.address), ins.address)
    return [Loop(start, end, tuple(i.opcode for i in instructions if start <= i.address <= end))
            for start, end in sorted(ends.items())]


def innermost_fma_loops(instructions: list[Instruction], fma_opcode: str) -> list[Loop]:
    """The loops with FMAs that contain no other loop with FMAs."""
    with_fma = [loop for loop in find_loops(instructions) if loop.fmas(fma_opcode)]
    return [loop for loop in with_fma if not any(loop.contains(other) for other in with_fma)]


def is_product_loop(loop: Loop) -> bool:
    """No MUFU (exp, tanh, reciprocal, square root): FMAs of a product, not of a function's
    expansion. (Not CALL: sm_80's SASS leaves plain loops by a CALL.REL to a label.)"""
    return not any(op.split(".")[0] == "MUFU" for op in loop.opcodes)


def hot_loop(candidates: list[Loop], fma_opcode: str) -> Loop | None:
    """Of innermost_fma_loops, the one by the module docstring's rule; None if there is none."""
    products = [loop for loop in candidates if is_product_loop(loop)]
    ranked = products or candidates
    if not ranked:
        return None
    most = max(loop.fmas(fma_opcode) for loop in ranked)
    return next(loop for loop in ranked if loop.fmas(fma_opcode) == most)


def innermost_fma_loop(instructions: list[Instruction], fma_opcode: str) -> Loop | None:
    return hot_loop(innermost_fma_loops(instructions, fma_opcode), fma_opcode)


def entry_instructions(sass: str) -> list[Instruction]:
    """The instructions of the one kernel entry in a cubin's SASS (the CUDA device runtime, linked
    for a grid-wide barrier, brings entries of its own: ``__nv_static_..``, not counted)."""
    functions, entries = parse_sass(sass)
    entries = [name for name in entries if not name.startswith("__nv_static")]
    if len(entries) != 1 or entries[0] not in functions:
        raise ValueError(f"expected one kernel entry in the SASS, found {entries}")
    return functions[entries[0]]


# what a loop's instructions do: the 64-bit index arithmetic the issue counts is in "integer"
# (ptxas moves constants with HFMA2.MMA: "integer" here, with the other moves)
KINDS = (("fma", {"FFMA", "DFMA"}),
         ("memory", {"LDG", "LDS", "LDC", "LDL", "STG", "STS", "STL", "LD", "ST", "ULDC", "LDSM", "RED", "ATOM"}),
         ("float", {"FADD", "FMUL", "DADD", "DMUL", "MUFU", "FSETP", "DSETP", "FSEL", "FMNMX", "F2F", "I2F", "F2I"}),
         ("control", {"BRA", "BAR", "BSSY", "BSYNC", "CALL", "RET", "EXIT", "WARPSYNC", "NOP", "YIELD"}))


def instruction_mix(loop: Loop) -> dict[str, int]:
    """Instructions of a loop by kind; "integer" is everything else (IMAD, IADD3, LEA, SHF,
    ISETP, SEL, LOP3, MOV, ...)."""
    mix = Counter()
    for op in loop.opcodes:
        base = op.split(".")[0]
        mix[next((kind for kind, ops in KINDS if base in ops), "integer")] += 1
    return dict(mix)


# -- compiling (simulator off) -------------------------------------------------------------------


@dataclass(frozen=True)
class StaticFigures:
    registers: int
    spills: int  # bytes stored and loaded
    static_shared: int  # bytes per block
    loop: Loop | None
    candidates: tuple[Loop, ...]  # innermost_fma_loops, for --mix
    sass: str


def nvdisasm_path() -> str:
    from shutil import which

    try:
        from cuda.pathfinder import find_nvidia_binary_utility

        found = find_nvidia_binary_utility("nvdisasm")
    except ImportError:
        found = None
    found = found or which("nvdisasm")
    if not found:
        raise RuntimeError("nvdisasm not found: pip install nvidia-cuda-nvdisasm")
    return found


def disassemble(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        done = subprocess.run([nvdisasm_path(), "-c", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nvdisasm failed: {done.stderr.strip()}")
    return done.stdout


def compile_variant(factory: str, args: tuple, dtype: str, cc: tuple[int, int]) -> StaticFigures:
    """One kernel variant (inspect.VARIANTS) compiled for ``cc``: ptxas's figures and its loop."""

    from lstmbench_backends.numba_cuda import kernels
    from lstmbench_backends.numba_cuda.inspect import build, compile_ptx, link_ptx, ptxas_figures

    if kernels.SIMULATOR:
        raise RuntimeError("the simulator is on (NUMBA_ENABLE_CUDASIM); it compiles nothing")
    ptx = compile_ptx(build(factory, dtype, *args), cc)
    cubin, log = link_ptx(ptx, cc)
    sass = disassemble(cubin)
    registers, spills = ptxas_figures(log)
    smem = re.search(r"(\d+) bytes smem", log)
    candidates = innermost_fma_loops(entry_instructions(sass), FMA_OPCODE[dtype])
    return StaticFigures(registers, spills, int(smem.group(1)) if smem else 0,
                         hot_loop(candidates, FMA_OPCODE[dtype]), tuple(candidates), sass)


def variant_label(name: str, args: tuple) -> str:
    """A kernel's name and its factory's arguments, as inspect.py's table has them:
    gemm, (64, 16) -> 'gemm(64,16)'; adam_update, () -> 'adam_update'."""
    return f"{name}({','.join(map(str, args))})" if args else name


def labelled_variants(kernel_filter: str = "") -> dict[tuple[str, tuple], str]:
    """inspect.VARIANTS whose label contains ``kernel_filter``: (factory, args) -> label."""
    from lstmbench_backends.numba_cuda.inspect import VARIANTS, build

    labels = {(f, tuple(a)): variant_label(build(f, "float32", *a).name, tuple(a))
              for f, a in VARIANTS}  # building a kernel compiles nothing
    return {variant: label for variant, label in labels.items() if kernel_filter in label}


# -- the launches of a training step (simulator on, in a child process) ----------------------------


def record_launches(arch: str, dtype: str, hidden: int, recurrence: str = "auto") -> dict:
    """Every launch of one training step of the benchmark model at B=128, T=64 on the card of
    ``arch`` with ``recurrence`` (the backend's default "auto", or "rows"), recorded and not run:
    {"launches": [{variant, label, blocks, threads, dynamic_shared, known, count, sweep}], "plan":
    the workspace's Plan as a dict}. ``count``: how often the step makes that launch; ``sweep``:
    "forward" / "backward" for a launch of a stepwise sweep (its per-step launches), else None."""
    import dataclasses
    import inspect as pyinspect

    import numpy as np

    import lstmbench as lb
    from lstmbench.bench.workloads import BENCH_OPTIMIZER, bench_batch, bench_model
    from lstmbench_backends.numba_cuda import SIMULATED_LIMITS, DeviceLimits, NumbaCuda
    from lstmbench_backends.numba_cuda.inspect import VARIANTS, build

    _, card, multiprocessors = ARCHS[arch]
    cfg = bench_model(hidden, dtype)
    x, y = bench_batch(cfg, BATCH, STEPS)
    backend = NumbaCuda(recurrence)
    backend._limits = replace(DeviceLimits(**SIMULATED_LIMITS), name=card, multiprocessors=multiprocessors)
    variants = {id(build(f, dtype, *a)): (f, a) for f, a in VARIANTS}
    launches: list[dict] = []
    inside = {"sweep": None}

    def record(kernel, grid, threads, shared, *args):
        factory, variant_args = variants.get(id(kernel), (kernel.name, ()))
        label = variant_label(kernel.name, variant_args)
        named = dict(zip(pyinspect.signature(kernel.py_func).parameters, args))
        if {"M", "N", "K"} <= set(named):  # a product: one row per shape
            label += f" {named['M']}x{named['N']}x{named['K']}"
        blocks = int(np.prod(grid)) if isinstance(grid, tuple) else int(grid)
        launch = dict(variant=[factory, list(variant_args)], label=label, blocks=blocks, threads=int(threads),
                      dynamic_shared=int(shared), known=id(kernel) in variants, sweep=inside["sweep"])
        for seen in launches:
            if {k: v for k, v in seen.items() if k != "count"} == launch:
                seen["count"] += 1
                return
        launches.append({**launch, "count": 1})

    def tagged(direction, method):
        def run(*args, **kwargs):
            inside["sweep"] = direction
            try:
                return method(*args, **kwargs)
            finally:
                inside["sweep"] = None
        return run

    backend._launch = record
    for direction in ("forward", "backward"):
        setattr(backend, f"_stepwise_{direction}", tagged(direction, getattr(backend, f"_stepwise_{direction}")))
    state = backend.init_state(cfg, lb.init_params(cfg, 0), BENCH_OPTIMIZER)
    backend.train_step(state, x, y)
    with backend.workspace(cfg, x) as ws:
        plan = dataclasses.asdict(ws.plan)
    return {"launches": launches, "plan": plan}


RECORDED = ("auto", "rows")  # the recurrences whose steps are recorded: the default, and rows to compare


def start_recording(combos: list[tuple[str, str, int, str]]) -> subprocess.Popen:
    """record_launches for each (arch, dtype, hidden, recurrence), in a child with the simulator on
    (this process compiles, so its simulator is off); it runs while the kernels compile."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--record-launches", json.dumps(combos)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish_recording(child: subprocess.Popen, combos: list) -> dict[tuple[str, str, int, str], dict]:
    out, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"recording the launches failed:\n{err[-3000:]}")
    recorded = json.loads(out.strip().splitlines()[-1])
    return {tuple(combo): launches for combo, launches in zip(combos, recorded)}


# -- the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    kernel: str
    dtype: str
    hidden: int
    arch: str
    registers: int
    spills: int
    shared_memory: int
    blocks: int | None  # None: not launched by the step at this shape
    threads: int | None
    loop_instructions_per_fma: float | None
    loop: Loop | None = field(default=None, compare=False, repr=False)  # the text output's detail
    candidates: tuple[Loop, ...] = field(default=(), compare=False, repr=False)
    count: int = field(default=1, compare=False)  # the model's detail: launches of this shape in a step
    sweep: str | None = field(default=None, compare=False)  # a stepwise sweep's launch: its direction

    def as_json(self) -> dict:
        return {key: getattr(self, key) for key in KEYS}


def make_row(label: str, where: tuple[str, str, int], figures: StaticFigures, blocks: int | None,
             threads: int | None, dynamic_shared: int) -> Row:
    arch, dtype, hidden = where
    loop, per_fma = figures.loop, None
    if loop is not None:
        per_fma = round(loop.instructions / loop.fmas(FMA_OPCODE[dtype]), 3)
    return Row(label, dtype, hidden, arch, figures.registers, figures.spills, figures.static_shared + dynamic_shared,
               blocks, threads, per_fma, loop, figures.candidates)


def rows_for(where: tuple[str, str, int], launches: list[dict], statics: dict, labels: dict) -> list[Row]:
    """The step's launches of the selected variants, in launch order, then the variants it
    does not launch at this shape."""
    rows, launched = [], set()
    for launch in launches:
        variant = (launch["variant"][0], tuple(launch["variant"][1]))
        if variant in statics:
            launched.add(variant)
            row = make_row(launch["label"], where, statics[variant], launch["blocks"], launch["threads"],
                           launch["dynamic_shared"])
            rows.append(replace(row, count=launch.get("count", 1), sweep=launch.get("sweep")))
    rows += [make_row(labels[variant], where, figures, None, None, 0)
             for variant, figures in statics.items() if variant not in launched]
    return rows


def cost_model(archs: list[str], dtypes: list[str], hidden: list[int], kernel_filter: str = "",
               sass_dir: Path | None = None) -> tuple[list[Row], list[str], dict]:
    """Rows for every (arch, dtype, hidden) and selected variant (the launches of the default
    step and of the rows recurrence's, each shape once), the labels of kernels the step launches
    that inspect.VARIANTS does not list (so nothing here compiles them), and for the model each
    recorded step: {(arch, dtype, hidden, recurrence): (its rows, its plan)}."""
    labels = labelled_variants(kernel_filter)
    if not labels:
        raise SystemExit(f"no kernel variant matches {kernel_filter!r}")
    combos = [(arch, dtype, h) for arch in archs for dtype in dtypes for h in hidden]
    child = start_recording([(*combo, recurrence) for combo in combos for recurrence in RECORDED])
    statics = {}
    try:
        for arch in archs:
            for dtype in dtypes:
                statics[arch, dtype] = {v: compile_variant(*v, dtype, ARCHS[arch][0]) for v in labels}
                if sass_dir is not None:
                    for variant, figures in statics[arch, dtype].items():
                        (sass_dir / f"{arch}_{dtype}_{labels[variant]}.sass").write_text(figures.sass)
    except BaseException:
        child.kill()  # the child we started: no orphan left recording
        child.wait()
        raise
    recorded = finish_recording(child, [(*combo, recurrence) for combo in combos for recurrence in RECORDED])
    steps = {key: (rows_for(key[:3], found["launches"], statics[key[:2]], labels), found["plan"])
             for key, found in recorded.items()}
    rows = []
    for combo in combos:  # the launches of every recorded step, each label once
        union = {}
        for recurrence in RECORDED:
            for launch in recorded[(*combo, recurrence)]["launches"]:
                union.setdefault(launch["label"], launch)
        rows += rows_for(combo, list(union.values()), statics[combo[:2]], labels)
    unknown = sorted({launch["label"] for found in recorded.values() for launch in found["launches"]
                      if not launch["known"]})
    return rows, unknown, steps


# -- output ------------------------------------------------------------------------------------------


def loop_cell(row: Row) -> str:
    if row.loop is None:
        return "-"
    fma = FMA_OPCODE[row.dtype]
    return f"{row.loop.instructions} / {row.loop.fmas(fma)} {fma} = {row.loop_instructions_per_fma:.2f}"


def format_tables(rows: list[Row]) -> str:
    """One table per (arch, dtype, hidden)."""
    lines, current = [], None
    for row in rows:
        where = (row.arch, row.dtype, row.hidden)
        if where != current:
            current = where
            _, card, sms = ARCHS.get(row.arch, (None, row.arch, "?"))
            title = (f"{row.arch} ({card}, {sms} SMs), {row.dtype}, H={row.hidden}: "
                     f"a training step at B={BATCH}, T={STEPS}")
            header = (f"{'kernel':<28} {'regs':>5} {'spill B':>7} {'smem B':>7} {'blocks':>6} {'threads':>7}  "
                      "innermost loop: instructions / FMA")
            lines += ["", title, header]
        blocks, threads = ("-", "-") if row.blocks is None else (row.blocks, row.threads)
        lines.append(f"{row.kernel:<28} {row.registers:>5} {row.spills:>7} {row.shared_memory:>7} {blocks:>6} "
                     f"{threads:>7}  {loop_cell(row)}")
    lines.append("")
    lines.append("gemm(BM,BN) MxNxK: the tile and the product's shape; blocks '-': a variant the step does not "
                 "launch at that shape (smem: its static part)")
    return "\n".join(lines[1:])


def format_mix(rows: list[Row]) -> str:
    """Each variant's hot loop by kind of instruction, once per (arch, dtype), and the other
    candidates the rule passed over."""
    lines, seen = ["innermost loops by kind of instruction (integer: index and address arithmetic)"], set()
    for row in rows:
        key = (row.arch, row.dtype, row.kernel.split(" ")[0])
        if row.loop is None or key in seen:
            continue
        seen.add(key)
        fma, mix = FMA_OPCODE[row.dtype], instruction_mix(row.loop)
        parts = ", ".join(f"{kind} {n} ({100 * n / row.loop.instructions:.0f}%)" for kind, n in
                          sorted(mix.items(), key=lambda kv: -kv[1]))
        lines.append(f"{row.arch} {row.dtype:<8} {key[2]:<18} [{row.loop.start:#06x}, {row.loop.end:#06x}] "
                     f"{row.loop.instructions:>4}: {parts}")
        passed = [f"[{o.start:#06x}, {o.end:#06x}] {o.instructions} / {o.fmas(fma)}" for o in row.candidates
                  if o != row.loop]
        if passed:
            lines.append(f"{'':<37} other innermost loops with {fma}: {'; '.join(passed)}")
    return "\n".join(lines)


# -- the modelled step (sm_90) -------------------------------------------------------------------------


def launch_microseconds(row: Row) -> tuple[str, float]:
    """(how, modelled µs) of one launch of the step: the backend's LAUNCH_MICROSECONDS (the one
    figure for a launch) plus its work. The rows recurrence: T steps of the backend's own cost
    model with the loop's measured instructions per FMA; a product: the backend's product_cycles,
    its multiply-adds at that rate in blocks per SM, or its operands (and a split's partials)
    through L2, whichever is slower; anything else nothing more (the update's 29 MB through HBM at
    3.35 TB/s, 9 µs at this shape, and the loss's and the sums' few µs stay inside the allowance)."""
    from lstmbench_backends.numba_cuda import CLOCK_GHZ, LAUNCH_MICROSECONDS, product_cycles, recurrence_step_cycles

    sms, itemsize = ARCHS[row.arch][2], 4 if row.dtype == "float32" else 8
    name, ipf = row.kernel.split("(")[0], row.loop_instructions_per_fma
    if name in ("lstm_forward", "lstm_backward"):
        rows = int(row.kernel.split("(")[1].split(",")[0])
        cycles = STEPS * recurrence_step_cycles(rows, row.hidden, BATCH, itemsize, sms, ipf)
        return f"{STEPS} steps x {cycles / STEPS:,.0f} clocks", LAUNCH_MICROSECONDS + cycles / CLOCK_GHZ / 1e3
    shape = re.search(r"^gemm\((\d+),(\d+)\) (\d+)x(\d+)x(\d+)", row.kernel)
    if shape:
        BM, BN, M, N, K = map(int, shape.groups())
        tiles = -(-M // BM) * -(-N // BN)
        splits = row.blocks // tiles
        l2 = (tiles * (min(BM, M) + min(BN, N)) * K + (splits > 1) * splits * M * N) * itemsize
        cycles = product_cycles(M * N * K, row.blocks, row.threads, sms, itemsize, ipf, l2)
        how = f"{M * N * K:,} FMA, {-(-row.blocks // sms)} wave(s)"
        return how, LAUNCH_MICROSECONDS + cycles / CLOCK_GHZ / 1e3
    return "other", LAUNCH_MICROSECONDS


def stepwise_sweep(direction: str, rows: list[Row], plan: dict) -> tuple[str, float]:
    """(how, modelled µs) of one stepwise sweep (its launches in ``rows``): the backend's
    sweep_microseconds, the one the plan chose by, with the measured instructions per FMA of the
    step's product (the gemm variant it launches most)."""
    from lstmbench_backends.numba_cuda import Sweep, sweep_microseconds

    first, sweep = rows[0], Sweep(**plan[direction])
    product = max((row for row in rows if row.kernel.startswith("gemm")), key=lambda row: row.count)
    launches, expected = sum(row.count for row in rows), 2 * STEPS - 1 + (direction == "backward")
    us = sweep_microseconds(sweep, direction, first.hidden, plan["padded_batch"], STEPS,
                            4 if first.dtype == "float32" else 8, ARCHS[first.arch][2],
                            product.loop_instructions_per_fma)
    how = (f"{launches} launches: {product.count} x {product.kernel} ({sweep.splits} chunks of K, "
           f"{product.loop_instructions_per_fma:.2f}/FMA), {launches - product.count} more")
    if launches != expected:
        how += f" (the model counts {expected})"
    return how, us


def model_step(rows: list[Row], plan: dict | None = None, what: str = "") -> str:
    """The modelled time of one training step at the goal shape, launch by launch (a launch the step
    makes n times counts n times), a stepwise sweep's launches as one line (stepwise_sweep)."""
    from lstmbench_backends.numba_cuda import CLOCK_GHZ, LAUNCH_MICROSECONDS

    launched = [row for row in rows if row.blocks is not None]
    lines = [f"modelled step, {launched[0].arch} at {CLOCK_GHZ} GHz, {launched[0].dtype}, H={launched[0].hidden}, "
             f"B={BATCH}, T={STEPS}{', ' + what if what else ''} (every launch {LAUNCH_MICROSECONDS:g} µs plus its "
             "work)"]
    total, done = 0.0, set()
    for row in launched:
        if row.sweep is None:
            how, us = launch_microseconds(row)
            label, us = (row.kernel if row.count == 1 else f"{row.kernel} x{row.count}"), us * row.count
        elif row.sweep in done:
            continue
        else:
            done.add(row.sweep)
            label = f"stepwise {row.sweep} sweep"
            how, us = stepwise_sweep(row.sweep, [r for r in launched if r.sweep == row.sweep], plan)
        total += us
        lines.append(f"  {label:<34} {how:<34} {us:>9.1f} µs")
    lines.append(f"  {'total':<34} {'':<34} {total:>9.1f} µs = {total / 1e3:.2f} ms")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="a JSON list of rows instead of the tables")
    parser.add_argument("--arch", nargs="+", choices=list(ARCHS), default=list(ARCHS))
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--hidden", nargs="+", type=int, default=list(HIDDEN))
    parser.add_argument("--kernel", default="", help="only the variants whose name contains this (gemm(64,64))")
    parser.add_argument("--mix", action="store_true", help="also each loop by kind of instruction")
    parser.add_argument("--sass", type=Path, help="write each variant's SASS into this directory")
    parser.add_argument("--model", action="store_true",
                        help="the modelled step time at sm_90, float32, H=512 (B=128, T=64), launch by launch, with "
                             "the default recurrence and with the rows one")
    parser.add_argument("--record-launches", help=argparse.SUPPRESS)  # the child's job (JSON list of combos)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.record_launches:
        print(json.dumps([record_launches(*combo) for combo in json.loads(args.record_launches)]))
        return 0
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"  # before numba.cuda is first imported: this process compiles
    if args.sass is not None:
        args.sass.mkdir(parents=True, exist_ok=True)
    if args.model:
        args.arch, args.dtype, args.hidden, args.kernel = ["sm_90"], ["float32"], [512], ""
    rows, unknown, steps = cost_model(args.arch, args.dtype, args.hidden, args.kernel, args.sass)
    for label in unknown:
        print(f"warning: the step launches {label}, which inspect.VARIANTS does not list: not compiled here",
              file=sys.stderr)
    if args.json:
        print(json.dumps([row.as_json() for row in rows], indent=1))
        return 0
    print(format_tables(rows))
    if args.model:
        for recurrence in RECORDED:
            step_rows, plan = steps["sm_90", "float32", 512, recurrence]
            chosen = f"forward {plan['forward']['recurrence']}, backward {plan['backward']['recurrence']}"
            what = f"the default recurrence (auto: {chosen})" if recurrence == "auto" else f'NumbaCuda("{recurrence}")'
            print()
            print(model_step(step_rows, plan, what))
    if args.mix:
        print()
        print(format_mix(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
