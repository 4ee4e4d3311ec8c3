"""The C backend (``c``): its build, stale-binary detection, the checks at the C
boundary, a run under AddressSanitizer, and a numerical spot check.

The conformance kit runs on it from tests/test_conformance.py like on every
registered backend.
"""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.errors import DTypeError, ShapeError
from lstmbench.layout import Layout
from lstmbench.testing import Case
from lstmbench.testing.checks import check_forward, check_loss_and_grads, check_training_steps
from lstmbench_backends import c_kernel
from lstmbench_backends.c_kernel import CKernel, LayoutError, sources

C_DIR = Path(c_kernel.__file__).resolve().parent
GCC = shutil.which("gcc")


def available_backend() -> CKernel:
    backend = CKernel()
    ok, why = backend.availability()
    if not ok:
        pytest.skip(why)
    return backend


def test_importing_the_backend_does_not_load_the_extension():
    code = ("import sys, lstmbench_backends.c_kernel; "
            "assert not [m for m in sys.modules if '_lstm_c' in m], 'extension loaded at import'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
def test_extension_is_built_where_a_compiler_exists():
    """With a compiler the install must have built it (the extension is optional for pip, not for CI)."""
    ok, why = CKernel().availability()
    assert ok, why


def _has_avx512() -> bool:
    ext, _ = c_kernel._load_extension(32)
    return ext is not None and bool(ext[1].lstm_cpu_has_avx512())


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
def test_the_64_byte_build_runs_where_the_cpu_has_avx512():
    """auto runs the 64-byte (AVX-512) build where it can, and 64 is refused, by name, where not."""
    backend = available_backend()
    if _has_avx512():
        assert backend.runtime_info()["vector_bytes"] == 64 and backend.runtime_info()["isa"].startswith("x86-64-v4")
        backend.vector_bytes = 32
        assert backend.runtime_info()["vector_bytes"] == 32
    else:
        assert backend.runtime_info()["vector_bytes"] == 32
        backend.vector_bytes = 64
        ok, why = backend.availability()
        assert not ok and "AVX-512" in why
    backend.vector_bytes = 48
    with pytest.raises(ValueError, match="vector_bytes"):
        backend.availability()


def _same_bits_cases():
    """Shapes whose products and plans use the wider panels differently: H not a multiple of
    either panel width, more panels than threads in one width and not the other, both plans,
    one-hot input, B = 1, several layers."""
    rng = np.random.default_rng(5)
    adam = lb.OptimizerConfig("adam", lr=1e-2, clip_norm=0.5)
    adamw = lb.OptimizerConfig("adamw", lr=1e-2, clip_norm=0.5, weight_decay=0.1)
    for dtype in ("float64", "float32"):
        for (D, H, O, L, loss, m2m, B, T) in ((3, 40, 4, 2, "mse", False, 16, 9), (1, 96, 1, 1, "mse", False, 1, 12),
                                                (6, 40, 6, 3, "xent", True, 3, 7), (3, 37, 3, 1, "mse", True, 100, 5)):
            cfg = lb.ModelConfig(D, H, O, L, loss, m2m, dtype)
            lead = (B, T) if m2m else (B,)
            x = (np.eye(D, dtype=dtype)[rng.integers(0, D, (B, T))] if loss == "xent"
                 else rng.standard_normal((B, T, D)).astype(dtype))
            y = rng.integers(0, O, lead) if loss == "xent" else rng.standard_normal(lead + (O,)).astype(dtype)
            yield Case(cfg, lb.init_params(cfg, H), x, y, adamw if m2m else adam, 3, seed=H)


@pytest.mark.parametrize("parallel", ["shards", "units", "auto"])
def test_the_32_and_64_byte_builds_give_the_same_bits(parallel):
    """Vector width changes which registers hold a column, never the order of any sum, so the two
    builds must agree bit for bit: forward, loss, gradients and trained parameters (with and
    without dropout: _run_everything trains with it too)."""
    from lstmbench.testing.checks import _run_everything

    if not _has_avx512():
        pytest.skip("this CPU has no AVX-512, so the 64-byte build cannot run")
    runs = {}
    for width in (32, 64):
        backend = available_backend()
        backend.vector_bytes, backend.parallel = width, parallel
        backend.set_threads(2)
        runs[width] = [_run_everything(backend, case) for case in _same_bits_cases()]
    for case, narrow, wide in zip(_same_bits_cases(), runs[32], runs[64]):
        for key in narrow:
            assert np.array_equal(narrow[key], wide[key]), f"{key} differs for {case.cfg}, B={case.x.shape[0]}"


def test_stale_binary_is_refused(tmp_path):
    backend = available_backend()
    for name in sources.SOURCES:
        shutil.copy(C_DIR / name, tmp_path / name)
    backend.source_dir = tmp_path
    assert backend.availability() == (True, "")  # the same sources: fine
    with open(tmp_path / "lstm_body.h", "a") as f:
        f.write("\n/* an edit after the build */\n")
    ok, why = backend.availability()
    assert not ok
    assert "stale" in why and "pip install" in why
    fresh = CKernel()  # running again (a new process makes a new backend object)
    fresh.source_dir = tmp_path
    cfg = lb.ModelConfig(1, 2, 1)
    with pytest.raises(lb.BackendUnavailableError, match="stale"):
        fresh.forward(cfg, lb.init_params(cfg), np.zeros((1, 2, 1)))


def test_stale_detection_compares_the_embedded_hash(monkeypatch):
    backend = available_backend()
    monkeypatch.setattr(sources, "source_hash", lambda folder=None: "0" * 64)
    ok, why = backend.availability()
    assert not ok and "stale" in why


def test_unbuilt_extension_says_what_to_run(monkeypatch):
    monkeypatch.setattr(c_kernel, "_load_extension", lambda width=32: (None, "No module named '_lstm_c'"))
    monkeypatch.setattr(c_kernel, "_compiler_found", lambda: True)
    ok, why = CKernel().availability()
    assert not ok and "not built" in why and "pip install" in why
    monkeypatch.setattr(c_kernel, "_compiler_found", lambda: False)
    ok, why = CKernel().availability()
    assert not ok and "no C compiler" in why


class _NoCalls:
    """Stands in for the compiled library: only the source hash and the CPU's AVX-512 may be read."""

    def __init__(self, lib):
        self.lstm_source_hash, self.lstm_cpu_has_avx512 = lib.lstm_source_hash, lib.lstm_cpu_has_avx512

    def __getattr__(self, name):
        raise AssertionError(f"C function {name} was called before the arguments were checked")


def test_wrong_arrays_raise_before_c_is_called():
    backend = available_backend()
    (ffi, lib), _ = backend._extension()
    backend._exts[backend._width()] = ((ffi, _NoCalls(lib)), "")
    cfg = lb.ModelConfig(2, 5, 3, dtype="float32")
    layout = Layout.of(cfg)
    theta = layout.flatten(lb.init_params(cfg), np.float32)
    x = np.zeros((4, 3, 2), np.float32)
    y = np.zeros((4, 3), np.float32)
    grad = np.empty(layout.size, np.float32)
    out = np.empty((4, 1, 3), np.float32)
    cases = [
        (DTypeError, lambda: backend._call("forward", cfg, theta, x.astype(np.float64), y_hat=out)),
        (DTypeError, lambda: backend._call("forward", cfg, theta.astype(np.float64), x, y_hat=out)),
        (DTypeError, lambda: backend._call("forward", cfg, theta, x, y_hat=out.astype(np.float64))),
        (LayoutError, lambda: backend._call("forward", cfg, theta, np.asfortranarray(np.zeros((4, 3, 2), np.float32)),
                                            y_hat=out)),
        (LayoutError, lambda: backend._call("forward", cfg, np.zeros(2 * layout.size, np.float32)[::2], x,
                                            y_hat=out)),
        (ShapeError, lambda: backend._call("forward", cfg, theta[:-1], x, y_hat=out)),
        (ShapeError, lambda: backend._call("forward", cfg, theta, x[:, :, :1], y_hat=out)),
        (ShapeError, lambda: backend._call("forward", cfg, theta, x, y_hat=out[:3])),
        (ShapeError, lambda: backend._call("loss_grad", cfg, theta, x, y, grad=grad[:-1])),
        (DTypeError, lambda: backend._call("loss_grad", cfg, theta, x, y.astype(np.float64), grad=grad)),
    ]
    read_only = grad.copy()
    read_only.flags.writeable = False
    cases.append((LayoutError, lambda: backend._call("loss_grad", cfg, theta, x, y, grad=read_only)))
    for error, call in cases:
        with pytest.raises(error):
            call()


def test_non_contiguous_user_input_is_accepted():
    backend = available_backend()
    cfg = lb.ModelConfig(2, 5, 1, dtype="float64")
    params = lb.init_params(cfg, 3)
    x = np.random.default_rng(0).standard_normal((3, 8, 2))[:, ::2]  # a strided view
    np.testing.assert_allclose(backend.forward(cfg, params, x),
                               lb.get_backend("numpy").forward(cfg, params, np.ascontiguousarray(x)), rtol=1e-12)


def _mid_size_case(dtype, loss, many_to_many):
    cfg = lb.ModelConfig(3, 64, 4, num_layers=2, loss=loss, many_to_many=many_to_many, dtype=dtype)
    rng = np.random.default_rng(7)
    B, T = 16, 20
    x = rng.standard_normal((B, T, 3)).astype(dtype)
    lead = (B, T) if many_to_many else (B,)
    y = rng.standard_normal(lead + (4,)).astype(dtype) if loss == "mse" else rng.integers(0, 4, lead)
    opt = lb.OptimizerConfig("adam", lr=1e-2, clip_norm=0.5)
    return Case(cfg, lb.init_params(cfg, 11), x, y, opt, steps=3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss,many_to_many", [("mse", False), ("xent", True)])
def test_matches_the_reference_on_a_mid_size_model(dtype, loss, many_to_many):
    """H=64, B=16, T=20, 2 layers: forward, loss and gradients, 3 clipped Adam steps."""
    backend = available_backend()
    case = _mid_size_case(dtype, loss, many_to_many)
    for threads in (1, 2):
        backend.set_threads(threads)
        check_forward(backend, case)
        check_loss_and_grads(backend, case)
        check_training_steps(backend, case)


def test_threads_are_honoured_and_reported():
    backend = available_backend()
    backend.set_threads(3)
    info = backend.runtime_info()
    assert info["threads"] == 3 and info["openmp"] in (True, False) and info["isa"]
    case = _mid_size_case("float32", "mse", False)
    first = backend.loss_and_grads(case.cfg, case.params, case.x, case.y)
    again = backend.loss_and_grads(case.cfg, case.params, case.x, case.y)
    assert first[0] == again[0] and all(np.array_equal(first[1][k], again[1][k]) for k in first[1])


def test_concurrent_calls_do_not_share_state():
    """cffi drops the GIL during a call: two Python threads training at once must get
    exactly what each gets alone."""
    backend = available_backend()
    backend.set_threads(1)
    case = _mid_size_case("float32", "mse", False)
    alone = []
    for seed in (0, 1):
        state = backend.init_state(case.cfg, lb.init_params(case.cfg, seed), case.opt)
        alone.append([backend.train_step(state, case.x, case.y) for _ in range(5)])
    together = [None, None]

    def train(k):  # a thread count is per thread (Backend.threads): each worker sets its own
        with backend.using_threads(1):
            state = backend.init_state(case.cfg, lb.init_params(case.cfg, k), case.opt)
            together[k] = [backend.train_step(state, case.x, case.y) for _ in range(5)]

    workers = [threading.Thread(target=train, args=(k,)) for k in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert together == alone


def _loss_in_child(backend, case, queue):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = backend.loss_and_grads(case.cfg, case.params, case.x, case.y)[0]
    queue.put((loss, backend.runtime_info().get("threads_used"), [str(w.message) for w in caught]))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_runs_on_one_thread_instead_of_hanging():
    """GNU OpenMP's thread pool does not survive fork(): the child must fall back to one thread."""
    import multiprocessing

    backend = available_backend()
    backend.set_threads(2)
    case = _mid_size_case("float64", "mse", False)
    loss = backend.loss_and_grads(case.cfg, case.params, case.x, case.y)[0]  # the pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_loss_in_child, args=(backend, case, queue))
    child.start()
    try:
        child_loss, threads_used, messages = queue.get(timeout=60)
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
    assert threads_used == 1 and any("fork" in m for m in messages)
    assert child_loss == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("pack_b", [True, False])
def test_matrix_product_matches_numpy(dtype, transpose_a, pack_b):
    available_backend()
    rng = np.random.default_rng(0)
    for M, K, N in [(1, 1, 1), (7, 5, 13), (13, 300, 37), (100, 3, 20), (64, 257, 130)]:
        a = rng.standard_normal((K, M) if transpose_a else (M, K)).astype(dtype)
        b = rng.standard_normal((K, N)).astype(dtype)
        expected = (a.T if transpose_a else a).astype(np.float64) @ b.astype(np.float64)
        if pack_b:
            got = c_kernel.matmul(a, b, transpose_a=transpose_a)
        else:
            padded = np.zeros((K, N + 32), dtype)  # rows at least N rounded up to the panel width
            padded[:, :N] = b
            got = c_kernel.matmul(a, padded, transpose_a=transpose_a, pack_b=False, n=N)
        tol = 1e-4 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.sqrt(K))


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
@pytest.mark.parametrize("vector_bytes", [32, 64])
def test_kernel_is_clean_under_address_sanitizer(tmp_path, vector_bytes):
    """asan_driver.c runs forward, backward and the optimizers (weight decay and AdamW included,
    the update also against its formula) for both dtypes, 1-3 layers, both losses and task
    shapes, on sizes that leave padding, each with and without dropout, under ASan and UBSan,
    in both builds (their panels, padding and workspace layouts differ)."""
    exe = tmp_path / "asan_driver"
    build = subprocess.run(
        [GCC, "-std=c11", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-fno-omit-frame-pointer", "-fopenmp", "-Wall", "-Wno-psabi", f"-DLSTM_VECTOR_BYTES={vector_bytes}",
         str(C_DIR / "asan_driver.c"), "-lm", "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, f"the ASan build failed:\n{build.stderr}"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", OMP_NUM_THREADS="4")
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
    report = run.stdout + run.stderr
    if "LeakSanitizer does not work under ptrace" in report:  # e.g. under a debugger or some sandboxes
        env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1"
        run = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
        report = run.stdout + run.stderr
    assert run.returncode == 0, f"asan_driver exited with {run.returncode}:\n{report[-4000:]}"
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in report, report[-4000:]
    assert "all cases passed" in run.stdout


def test_auto_puts_the_threads_on_hidden_units_only_for_few_rows():
    backend = available_backend()
    backend.set_threads(2)
    for B, H, plan in ((1, 64, "units"), (2, 256, "units"), (4, 256, "units"), (8, 256, "shards"), (4, 64, "shards"),
                       (1, 8, "shards")):
        cfg = lb.ModelConfig(1, H, 1)
        backend.forward(cfg, lb.init_params(cfg), np.zeros((B, 2, 1)))
        assert backend.last_plan == plan, (B, H)


@pytest.mark.parametrize("parallel", ["shards", "units"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_hot_input_is_read_as_symbols_and_matches_the_reference(parallel, dtype):
    """One-hot x_t = e_s: the kernel copies row s of W_x instead of multiplying, and adds dz rows
    into dW_x; the numbers must not change."""
    from lstmbench_backends.c_kernel import one_hot_symbols

    backend = available_backend()
    backend.set_threads(2)
    backend.parallel = parallel
    cfg = lb.ModelConfig(6, 40, 6, 2, "xent", True, dtype)
    rng = np.random.default_rng(3)
    symbols = rng.integers(0, 6, size=(3, 7))
    x = np.eye(6, dtype=dtype)[symbols]
    assert np.array_equal(one_hot_symbols(x), symbols)
    case = Case(cfg, lb.init_params(cfg, 2), x, rng.integers(0, 6, size=(3, 7)), lb.OptimizerConfig("adam", lr=1e-2), 3)
    check_forward(backend, case)
    check_loss_and_grads(backend, case)
    check_training_steps(backend, case)


def test_inputs_that_are_not_one_hot_are_multiplied():
    from lstmbench_backends.c_kernel import one_hot_symbols

    x = np.eye(4)[np.zeros((2, 3), int)]
    assert one_hot_symbols(x) is not None
    for bad in (x * 2, np.where(x == 0, 0.5, x), np.zeros_like(x), np.ones((2, 3, 1))):
        assert one_hot_symbols(bad) is None
    twice = x.copy()
    twice[1, 2, 1] = 1.0  # two ones in one vector
    assert one_hot_symbols(twice) is None


def _dropout_case(dtype: str, loss: str, many_to_many: bool, layers: int, batch: int, hidden: int) -> Case:
    rng = np.random.default_rng(layers)
    cfg = lb.ModelConfig(3, hidden, 4, layers, loss, many_to_many, dtype)
    T = 6
    x = rng.standard_normal((batch, T, 3)).astype(dtype)
    lead = (batch, T) if many_to_many else (batch,)
    y = rng.standard_normal(lead + (4,)).astype(dtype) if loss == "mse" else rng.integers(0, 4, lead)
    return Case(cfg, lb.init_params(cfg, 7), x, y, lb.OptimizerConfig("adamw", lr=1e-2, weight_decay=0.1), 2,
                seed=12345 + layers)


@pytest.mark.parametrize("parallel", ["shards", "units"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dropout_matches_the_reference_in_both_plans(parallel, dtype):
    """The masks the kernel draws from the hash are the reference's, whether a row's shard runs
    on one thread or the threads share its hidden units: loss and gradients, the two halves of a
    batch given their first rows, training steps, with lengths (rows permuted into shards), an
    initial state and a carried one; many-to-one (one masked step per row) and many-to-many."""
    from lstmbench.testing.checks import check_dropout

    backend = available_backend()
    backend.set_threads(2)
    backend.parallel = parallel
    for loss, m2m, layers, batch, hidden in (("mse", False, 2, 7, 20), ("xent", True, 3, 5, 37), ("mse", True, 1, 3, 9)):
        check_dropout(backend, _dropout_case(dtype, loss, m2m, layers, batch, hidden))


def test_dropout_costs_no_memory_at_p_zero():
    """Only a model with p > 0 gets the buffers for the masked layer outputs; at p = 0 the
    workspace is what it was before dropout existed."""
    backend = available_backend()
    x = np.zeros((8, 5, 3))
    sizes = {}
    for p in (0.0, 0.3):
        cfg = lb.ModelConfig(3, 16, 2, 2, dropout=p)
        sizes[p] = backend._make_workspace(backend._workspace_key(cfg, x)).block.size
    assert sizes[0.3] > sizes[0.0]
    plain = lb.ModelConfig(3, 16, 2, 2)
    assert backend._make_workspace(backend._workspace_key(plain, x)).block.size == sizes[0.0]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", [lb.OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=0.1),
                                 lb.OptimizerConfig("adam", lr=1e-2, clip_norm=0.5, weight_decay=0.1),
                                 lb.OptimizerConfig("adamw", lr=1e-2, clip_norm=0.5, weight_decay=0.1)],
                         ids=["sgd-l2", "adam-l2", "adamw"])
def test_weight_decay_in_the_fused_step_and_the_update_alone(dtype, opt):
    """L2 weight decay (SGD, Adam) and decoupled decay (AdamW) as lstmbench.optim applies them,
    in lstm_train_step (no hook) and in lstm_update (after a gradient hook)."""
    from dataclasses import replace

    from lstmbench.testing.checks import check_gradient_hook

    backend = available_backend()
    backend.set_threads(2)
    case = replace(_mid_size_case(dtype, "mse", False), opt=opt)
    check_training_steps(backend, case)
    check_gradient_hook(backend, case)
