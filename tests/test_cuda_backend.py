"""The CUDA backend (``cuda``): the conformance kit, its launch structure, its launch
shapes, what stays on the device, errors, training through the CLI, and what its
kernels compile to on a real GPU.

Here (and in CI) the kernels run in Numba's CUDA simulator: tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1 unless the caller set it. On a GPU machine,
``NUMBA_ENABLE_CUDASIM=0 pytest tests/test_cuda_backend.py`` runs the same tests
on the device. These tests fail, not skip, when numba-cuda is missing: it comes
with the ``dev`` extra.

The simulator runs one block at a time and every CUDA thread as a Python thread.
So it checks each block's arithmetic, indexing and ``syncthreads`` placement, but
not what blocks running at once would do to each other; the kernels are written
so that there is nothing to check there (no block reads what another writes
within a launch). It is also slow, about a second per training step of the
kit's tiny models, so the kit runs with fewer examples than the profile's, and
the launch shapes the tiny models never reach (several recurrence blocks,
64-wide product tiles, several hidden units per thread, several loss blocks) get
tests of their own below. Lengths and states (the kit's ``sequences`` check runs
here) have more tests in tests/test_cuda_sequences.py.

float32 tolerance: the kit's (1e-4 relative, and 10x the float32 reference's own
error on the case). On a GPU the products add in float32 in another order than
NumPy's BLAS, and libdevice's expf/tanhf are within 2 ulp, so the error is of the
float32 reference's own size. The simulator evaluates math.exp and math.tanh of
float32 values in float64 before rounding, so its error is smaller still. Both
sit inside the same tolerance, which stays the kit's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.bench import formatting, run, workloads
from lstmbench.training.checkpoint import load_checkpoint
from lstmbench.cli import main as cli_main
from lstmbench.config import DropoutDraw
from lstmbench.errors import DeviceError, NonFiniteError, ShapeError
from lstmbench.testing import CHECKS, Case, CheckSkipped, run_check
from lstmbench.testing.checks import assert_loss_and_grads, check_forward, check_loss_and_grads, check_training_steps
from lstmbench.training.loop import LAST_CHECKPOINT

from lstmbench_backends.numba_cuda import NumbaCuda, kernels  # imports numba.cuda: fails where it is missing

SIMULATED = kernels.SIMULATOR
# The simulator's cost, not the kit's needs, sets this (see the module docstring): 10
# examples per check and dtype take a few minutes. On a GPU: the profile's.
KIT_EXAMPLES = 10 if SIMULATED else None
# sequences runs four length variants, training steps, the hook and carried steps per
# example (about 7 s each in the simulator): fewer examples, 24 length cases per dtype;
# dropout, with its split batch, lengths and carried steps, costs about as much, and so do
# deterministic and thread_independent, which run everything twice (three times) and train
# with and without dropout (about 4 s per example)
KIT_SEQUENCE_EXAMPLES = 6 if SIMULATED else None
SLOW_CHECKS = ("sequences", "dropout", "deterministic", "thread_independent")
ADAM_CLIP = lb.OptimizerConfig("adam", lr=1e-2, clip_norm=0.05)
SGD_MOMENTUM = lb.OptimizerConfig("sgd", lr=0.5, momentum=0.9)


pytestmark = pytest.mark.usefixtures("quick_thread_switches")  # tests/conftest.py


@pytest.fixture
def backend(cuda_backend) -> NumbaCuda:
    return cuda_backend


def make_case(D, H, O, L, loss, many_to_many, dtype, B, T, opt=ADAM_CLIP, steps=2, seed=0, dropout=0.0) -> Case:
    cfg = lb.ModelConfig(D, H, O, L, loss, many_to_many, dtype, dropout=dropout)
    x, y = workloads.bench_batch(cfg, B, T, seed)
    return Case(cfg, lb.init_params(cfg, seed), x, y, opt, steps, seed=seed)


def check_all(backend, case: Case) -> None:
    check_forward(backend, case)
    check_loss_and_grads(backend, case)
    check_training_steps(backend, case)


def launched(backend: NumbaCuda) -> list:
    """Record every launch: (kernel, grid, threads, shared bytes, args)."""
    calls = []
    launch = backend._launch

    def record(kernel, grid, threads, shared, *args):
        calls.append((kernel, grid, threads, shared, args))
        launch(kernel, grid, threads, shared, *args)

    backend._launch = record
    return calls


# -- the conformance kit ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("check", list(CHECKS))
def test_conformance_kit(check, dtype):
    ok, why = lb.load_backend("cuda").availability()
    assert ok, why
    if check == "declared_unsupported":  # nothing is declared unsupported, so the kit has nothing to refuse
        with pytest.raises(CheckSkipped, match="declares every configuration supported"):
            run_check("cuda", check, dtype, max_examples=KIT_EXAMPLES)
        return
    run_check("cuda", check, dtype, max_examples=KIT_SEQUENCE_EXAMPLES if check in SLOW_CHECKS else KIT_EXAMPLES)


# -- structure: launches, residency ------------------------------------------------------------


@pytest.mark.parametrize("layers,many_to_many,clip", [(1, False, None), (2, True, 0.05), (3, False, 10.0)])
def test_launches_per_step_do_not_grow_with_steps_or_batch(backend, layers, many_to_many, clip):
    counts = {}
    for B, T in ((3, 4), (3, 8), (11, 4)):
        case = make_case(2, 3, 2, layers, "mse", many_to_many, "float32", B, T,
                         opt=lb.OptimizerConfig("adam", clip_norm=clip))
        state = backend.init_state(case.cfg, case.params, case.opt)
        backend.train_step(state, case.x, case.y)
        counts[B, T] = backend.launches_per_step
        assert backend.runtime_info()["launches_per_step"] == counts[B, T]
    # per layer: input product, recurrence, and backward sweep, dW_x, dW_h, (dx for layers above the first);
    # once: head, loss, W_h transpose, dW_y, dh of the head, the bias sums, the update (and the clipping norm)
    expected = 6 * layers + 6 + (clip is not None)
    assert counts == {(3, 4): expected, (3, 8): expected, (11, 4): expected}


def test_a_step_moves_the_batch_in_and_the_loss_out(backend, monkeypatch):
    """After the first step of a shape, a step allocates nothing and copies x and y in, the loss out."""
    from numba import cuda

    case = make_case(2, 4, 3, 2, "xent", True, "float32", 5, 6)
    state = backend.init_state(case.cfg, case.params, case.opt)
    backend.train_step(state, case.x, case.y)  # first step of this shape: the workspace is made
    array_type = type(state.theta)
    counts = {"to_device": 0, "device_array": 0, "in": 0, "out": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(cuda, "to_device", counting("to_device", cuda.to_device))
    monkeypatch.setattr(cuda, "device_array", counting("device_array", cuda.device_array))
    monkeypatch.setattr(array_type, "copy_to_device", counting("in", array_type.copy_to_device))
    monkeypatch.setattr(array_type, "copy_to_host", counting("out", array_type.copy_to_host))
    backend.train_step(state, case.x, case.y)
    assert counts == {"to_device": 0, "device_array": 0, "in": 2, "out": 1}
    backend.get_params(state)
    assert counts["out"] == 2


def test_kernel_arguments_have_the_declared_types(backend):
    """Every launch passes exactly the types its kernel declares (Kernel.arg_types), which
    the compile test below builds for a GPU: no float64 scalar slips into a float32 kernel."""
    import numba

    calls = launched(backend)
    for dtype in ("float32", "float64"):
        for loss, m2m, opt in (("mse", False, ADAM_CLIP), ("xent", True, SGD_MOMENTUM),
                               ("mse", True, lb.OptimizerConfig("sgd", lr=0.1))):
            case = make_case(2, 3, 2, 2, loss, m2m, dtype, 3, 3, opt=opt)
            backend.train_step(backend.init_state(case.cfg, case.params, case.opt), case.x, case.y)
            backend.forward(case.cfg, case.params, case.x)
            backend.loss_and_grads(case.cfg, case.params, case.x, case.y)
            # lengths, a host state in, then the final state out and back in on the device
            lengths, state = np.array([3, 1, 2]), tuple(np.ones((2, 3, 3), dtype) for _ in "hc")
            train = backend.init_state(case.cfg, case.params, case.opt)
            _, carried = backend._loss_and_gradient(train, case.x, case.y, lengths=lengths, initial_state=state,
                                                    return_state=True)
            backend._loss_and_gradient(train, case.x, case.y, lengths=lengths, initial_state=carried)
        # the masks' arguments (dropout) and weight decay: AdamW's and SGD's
        for opt in (lb.OptimizerConfig("adamw", lr=1e-2, weight_decay=0.1),
                    lb.OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=0.1)):
            case = make_case(2, 3, 2, 2, "mse", False, dtype, 3, 3, opt=opt, dropout=0.5)
            backend.train_step(backend.init_state(case.cfg, case.params, case.opt, seed=1), case.x, case.y,
                               lengths=np.array([3, 1, 2]))
    seen = set()
    for kernel, _, _, _, args in calls:
        got = tuple(getattr(a, "_numba_type_", None) or numba.typeof(a) for a in args)
        assert got == kernel.arg_types, f"{kernel.name}: launched with {got}, declares {kernel.arg_types}"
        seen.add(kernel.name)
    assert seen == {"gemm", "lstm_forward", "lstm_backward", "pack_wh", "loss_head", "finish_grads",
                    "sum_squares", "adam_update", "sgd_update", "gather_rows"}


def test_dropout_adds_no_launch_and_nothing_at_p_0(backend):
    """Dropout is drawn inside the launches a step has anyway; at p = 0 the workspace has no
    masked-output buffers (hd: one-element placeholders)."""
    counts, sizes = {}, {}
    for p in (0.0, 0.5):
        case = make_case(2, 3, 2, 2, "mse", True, "float32", 3, 4, opt=lb.OptimizerConfig("adamw", weight_decay=0.1),
                         dropout=p)
        backend.train_step(backend.init_state(case.cfg, case.params, case.opt), case.x, case.y)
        counts[p] = backend.launches_per_step
        with backend.workspace(case.cfg, case.x) as ws:
            sizes[p] = [buffer.size for buffer in ws.dev["hd"]]
    assert counts == {0.0: 6 * 2 + 6, 0.5: 6 * 2 + 6}
    assert sizes == {0.0: [1, 1], 0.5: [4 * 4 * 3, 4 * 4 * 3]}  # T * Bp * H: Bp = 4 rows for B = 3


# -- launch shapes the kit's tiny models never reach ----------------------------------------------


# every tile gemm_shape picks: 32/64/128 rows x 32/64/128 columns, but (32, 64) for two short sides
@pytest.mark.parametrize("M,N", [(9, 9), (9, 70), (40, 9), (40, 40), (40, 70), (70, 9), (70, 40), (70, 67)])
def test_gemm_every_tile_and_operand_layout(backend, M, N):
    """C = op(A) op(B) + bias against NumPy, with A and B each row-major or transposed, read in
    place at an offset inside a longer buffer, and C written at an offset with its own row stride."""
    from numba import cuda

    rng = np.random.default_rng(M * N)
    K, off, ldc = 19, 3, N + 2
    for a_t in (False, True):
        for b_t in (False, True):
            a = rng.standard_normal((K, M) if a_t else (M, K))
            b = rng.standard_normal((N, K) if b_t else (K, N))
            bias = rng.standard_normal(N)
            flat = lambda m: np.concatenate([np.full(off, np.nan), m.ravel()])  # noqa: E731 (NaN: never read)
            c = cuda.to_device(np.zeros(off + M * ldc))
            a_rs, a_cs = (1, M) if a_t else (K, 1)
            b_rs, b_cs = (1, K) if b_t else (N, 1)
            backend._gemm(np.dtype("float64"), M, N, K, cuda.to_device(flat(a)), off, a_rs, a_cs,
                          cuda.to_device(flat(b)), off, b_rs, b_cs, c, off, ldc, bias=cuda.to_device(flat(bias)),
                          bias_off=off)
            got = c.copy_to_host()[off:].reshape(M, ldc)
            expected = (a.T if a_t else a) @ (b.T if b_t else b) + bias
            np.testing.assert_allclose(got[:, :N], expected, rtol=1e-12, atol=1e-12,
                                       err_msg=f"A transposed: {a_t}, B transposed: {b_t}")
            assert np.all(got[:, N:] == 0)  # nothing written past a row's N columns


def workspace_plan(backend, cfg, B, T):
    """The launch plan of the workspace the backend keeps for batches of shape (B, T, D)."""
    with backend.workspace(cfg, np.zeros((B, T, cfg.input_size), cfg.np_dtype)) as ws:
        return ws.plan


@pytest.mark.parametrize("dtype,loss,many_to_many", [("float64", "mse", False), ("float32", "xent", True)])
def test_several_blocks_padding_rows_and_large_tiles(backend, dtype, loss, many_to_many):
    """B=11: several recurrence blocks, the last with padding rows; 4H = 64 and T*Bp >= 44 rows:
    the 64 x 64 product tile."""
    case = make_case(3, 16, 3, 2, loss, many_to_many, dtype, 11, 4)
    calls = launched(backend)
    check_all(backend, case)
    plan = workspace_plan(backend, case.cfg, 11, 4)
    assert plan.padded_batch > 11 and plan.forward.blocks >= 2 and plan.backward.blocks >= 2
    assert any(k is kernels.gemm_kernel(np.dtype(dtype), 64, 64) for k, _, _, _, _ in calls)
    assert any(k.name == "lstm_backward" and grid == plan.backward.blocks for k, grid, _, _, _ in calls)


@pytest.mark.parametrize("many_to_many,lengths", [(False, [4, 1, 3, 2, 4, 3, 1, 2, 4, 2, 3]), (True, None)])
def test_dropout_on_several_blocks_padding_rows_and_a_shard(backend, many_to_many, lengths):
    """The masks of several recurrence blocks (B=11, the last block with padding rows), the rows
    sorted by length and packed (many-to-one) or padded (many-to-many), for a shard whose first
    row is 21 in the global minibatch: the loss and gradients equal the reference's."""
    case = make_case(3, 16, 3, 2, "mse", many_to_many, "float64", 11, 4, dropout=0.25)
    case = replace(case, lengths=None if lengths is None else np.array(lengths))
    draw = DropoutDraw(seed=7, step=3, first_row=21)
    loss, grads = backend.loss_and_grads(case.cfg, case.params, case.x, case.y, dropout=draw, **case.sequence_args())
    assert_loss_and_grads(case, loss, grads, dropout=draw)


def test_several_hidden_units_per_thread(backend, monkeypatch):
    """H=67 on blocks of 32 threads: forward threads take units j, j + 32, j + 64; backward threads
    the pairs (2j, 2j + 1) and (2j + 64, 2j + 65), the last pair's second unit past H."""
    monkeypatch.setattr(kernels, "MAX_RECURRENCE_THREADS", 32)
    case = make_case(2, 67, 2, 1, "mse", True, "float64", 2, 3, steps=1)
    check_all(backend, case)
    plan = workspace_plan(backend, case.cfg, 2, 3)
    assert (plan.forward.threads, plan.backward.threads) == (32, 32)


def test_several_loss_and_update_blocks(backend, monkeypatch):
    from lstmbench_backends import numba_cuda

    monkeypatch.setattr(kernels, "LOSS_THREADS", 8)
    monkeypatch.setattr(numba_cuda, "PER_THREAD", 1)
    case = make_case(3, 5, 3, 1, "xent", True, "float64", 10, 3)  # 30 predictions: 4 loss blocks
    calls = launched(backend)
    check_all(backend, case)
    grids = {k.name: grid for k, grid, _, _, _ in calls}
    assert grids["loss_head"] == 4 and grids["adam_update"] >= 2 and grids["sum_squares"] >= 2


def test_rows_per_block_follow_the_shared_memory_limit(backend):
    case = make_case(2, 5, 2, 1, "mse", False, "float64", 6, 3)
    limits = backend._device_limits()
    backend._limits = replace(limits, max_shared=2 * 4 * 5 * 8)  # dz_{t+1} of 2 rows, no more
    check_all(backend, case)
    plan = workspace_plan(backend, case.cfg, 6, 3)
    assert (plan.forward.rows, plan.backward.rows) == (8, 2)  # h_{t-1} of 8 rows fits, dz_{t+1} of 2

    tiny = NumbaCuda()
    tiny._limits = replace(limits, max_shared=4 * 5 * 8 - 1)  # not even one row fits
    calls = launched(tiny)
    with pytest.raises(ShapeError, match="shared memory"):
        tiny.loss_and_grads(case.cfg, case.params, case.x, case.y)
    assert calls == [] and len(tiny.workspaces) == 0


# -- errors ---------------------------------------------------------------------------------


def test_bad_input_is_refused_before_the_device_is_touched(backend, monkeypatch):
    case = make_case(2, 3, 2, 1, "mse", False, "float32", 3, 4)
    state = backend.init_state(case.cfg, case.params, case.opt)

    def touched(*args, **kwargs):
        raise AssertionError("the device was used for a bad input")

    monkeypatch.setattr(backend, "_stage", touched)
    monkeypatch.setattr(backend, "_to_device", touched)
    bad = case.x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        backend.train_step(state, bad, case.y)
    with pytest.raises(NonFiniteError):
        backend.forward(case.cfg, case.params, bad)
    with pytest.raises(ShapeError):
        backend.loss_and_grads(case.cfg, case.params, case.x[:, :, :1], case.y)


def cuda_api_error():
    from numba.cuda.cudadrv.driver import CudaAPIError

    try:
        return CudaAPIError(2, "CUDA_ERROR_OUT_OF_MEMORY")
    except TypeError:  # pragma: no cover - another constructor
        return CudaAPIError("CUDA_ERROR_OUT_OF_MEMORY")


def test_a_cuda_error_names_the_step_and_the_shape(backend, monkeypatch):
    case = make_case(2, 3, 2, 1, "mse", False, "float32", 3, 4)
    state = backend.init_state(case.cfg, case.params, case.opt)

    def failing(*args):
        raise cuda_api_error()

    monkeypatch.setattr(backend, "_launch", failing)
    with pytest.raises(DeviceError, match=r"CUDA error in train_step \(batch of shape \(3, 4, 2\)") as info:
        backend.train_step(state, case.x, case.y)
    assert "OUT_OF_MEMORY" in str(info.value)


# -- availability and what it reports ------------------------------------------------------------


def test_without_numba_cuda_it_names_the_extra(monkeypatch):
    from lstmbench_backends import numba_cuda

    monkeypatch.setattr(numba_cuda, "find_spec", lambda name: None)
    ok, why = NumbaCuda().availability()
    assert not ok and "numba-cuda is not installed" in why and "lstmbench[cuda]" in why


def test_without_a_gpu_it_says_so_and_names_the_simulator(tmp_path):
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    code = ("import json; from lstmbench_backends.numba_cuda import NumbaCuda; from numba import cuda; "
            "print(json.dumps([cuda.is_available(), NumbaCuda().availability()]))")
    gpu, (ok, why) = json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path,
                                               capture_output=True, text=True).stdout)
    if gpu:
        pytest.skip("this machine has a CUDA GPU")
    assert not ok
    assert why.startswith("no CUDA GPU found") and "NUMBA_ENABLE_CUDASIM=1" in why and "simulator" in why
    listing = subprocess.run([sys.executable, "-m", "lstmbench.cli", "backends"], env=env, check=True, cwd=tmp_path,
                             capture_output=True, text=True).stdout
    line = next(row for row in listing.splitlines() if row.startswith("cuda "))
    assert " no " in line and "NUMBA_ENABLE_CUDASIM=1" in line


def test_runtime_info_reports_the_device(backend):
    case = make_case(1, 2, 1, 1, "mse", False, "float32", 2, 3)
    backend.train_step(backend.init_state(case.cfg, case.params, case.opt), case.x, case.y)
    info = backend.runtime_info()
    assert {"device", "compute_capability", "driver", "runtime", "simulator", "launches_per_step"} <= set(info)
    # 6L + 6 and the clipping norm, less the dW_x product: one input, folded into the backward sweep (test_cuda_fold.py)
    assert info["simulator"] is SIMULATED and info["launches_per_step"] == 12
    if SIMULATED:
        assert "simulator" in info["device"]


# -- the core's features on it: the CLI, resume, the bench -----------------------------------------


def test_train_and_resume_through_the_cli(tmp_path, capsys):
    base = ["train", "--backend", "cuda", "--dataset", "nile", "--window", "5", "--hidden", "4", "--dtype",
            "float64", "--batch-size", "32", "--quiet"]
    assert cli_main([*base, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert cli_main([*base, "--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    assert cli_main([*base, "--epochs", "2", "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "backend cuda" in out
    straight, resumed = (load_checkpoint(tmp_path / name / LAST_CHECKPOINT) for name in ("straight", "resumed"))
    for name, value in straight.params.items():  # the kernels have no atomics: the same bits
        assert np.array_equal(value, resumed.params[name]), name
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["backend"] == "cuda"


def test_bench_times_it_only_when_named(backend):
    names, left_out = run.default_backends()
    if SIMULATED:
        assert "cuda" not in names and "simulator" in left_out["cuda"]
    report = run.run_grid(["numpy", "cuda"], hidden_sizes=(4,), batch_sizes=(3,), steps=5, repeats=1,
                            with_torch=False, progress=False)
    row = next(r for r in report["rows"] if r["backend"] == "cuda")
    assert row["status"] == "ok" and row["timing"] is not None
    assert " cuda " in formatting.format_grid(report)


# -- what the kernels compile to on a GPU ---------------------------------------------------------


def test_kernels_compile_for_a_gpu_without_float64_or_spills(tmp_path):
    """Every kernel variant, compiled for sm_90 with the argument types it is launched with
    (NVVM, then ptxas through nvJitLink: no GPU needed). The simulator cannot see any of this."""
    code = ("import json, dataclasses; from lstmbench_backends.numba_cuda.inspect import compile_report; "
            "print(json.dumps([dataclasses.asdict(r) | {'hot': r.hot} for r in compile_report((9, 0))]))")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = json.loads(done.stdout)
    from lstmbench_backends.numba_cuda.inspect import VARIANTS

    assert len(reports) == 2 * len(VARIANTS)  # every variant, float32 and float64
    for r in reports:
        where = f"{r['kernel']} {r['variant']} {r['dtype']}"
        assert r["local_accesses"] == 0, f"{where}: local arrays not in registers"
        assert r["spill_bytes"] == 0, f"{where}: spills registers"
        assert r["registers"] * r["launch_bound"] <= 65536, f"{where}: a full block would not fit an SM's registers"
        if r["hot"] and r["dtype"] == "float32":
            assert r["f64_instructions"] == 0, f"{where}: float64 instructions in a float32 kernel"
