"""The Numba CUDA backend (registered as ``cuda``): the whole training step on the GPU.

Importing this module is cheap: numba.cuda is imported (and kernels compiled, or
loaded from the on-disk cache) only when the backend is asked whether it can run
or first runs. The math and its kernels are in kernels.py; how they are
launched, and what one training step does, is here.

Parameters, optimizer state, activations and workspaces live on the device from
``init_state`` on; a training step copies the minibatch in and the loss out, and
host copies of the parameters or the optimizer state are made only by
``get_params`` / ``get_optimizer_state``. The number of kernel launches per step
does not depend on the sequence length: each layer's recurrence is one launch
that loops over t (``runtime_info()["launches_per_step"]``). The host side of a
training step (step counter, the optimizer's per-step scalars, gradient hook,
workspace cache) is lstmbench.fused's; this backend supplies the kernels.

Run the kernels without a GPU in Numba's CUDA simulator with
``NUMBA_ENABLE_CUDASIM=1`` (set before numba.cuda is imported; slow, for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

import numpy as np

from lstmbench import Capabilities, ModelConfig
from lstmbench.errors import DeviceError, ShapeError
from lstmbench.fused import FusedBackend
from lstmbench.layout import FlatTrainState, Layout
from lstmbench.optim import StepScalars

RUNTIME = "the CUDA runtime that matches the driver (pip install 'numba-cuda[cu12]' or 'numba-cuda[cu13]')"
SIMULATOR_HINT = "set NUMBA_ENABLE_CUDASIM=1 to run the kernels in Numba's CUDA simulator (slow; for tests)"

# CUDA's own limits, which every device since compute capability 2.0 meets; the
# simulator has no device to ask.
SIMULATED_LIMITS = dict(name="Numba CUDA simulator (on the CPU)", max_threads=1024, max_shared=48 * 1024,
                        multiprocessors=1, max_grid_y=65535)
MAX_ROWS_PER_BLOCK = 8  # batch rows a recurrence block owns (see plan())
UPDATE_BLOCKS = 1024  # most blocks of the elementwise kernels (grid-stride loops over the parameters)
NORM_BLOCKS = 256  # most partial sums of the clipping norm
PER_THREAD = 8  # elementwise kernels: at least this many elements per thread (fewer, larger blocks)


def _cuda():
    from numba import cuda

    return cuda


def _kernels():
    from lstmbench_backends.numba_cuda import kernels

    return kernels


def cuda_errors() -> tuple[type[BaseException], ...]:
    """The exception types numba-cuda raises for a failed CUDA call (OOM, launch failure)."""
    from numba.cuda.cudadrv import driver, error

    return tuple({driver.CudaAPIError, *(getattr(error, n) for n in ("CudaDriverError", "CudaSupportError",
                                                                      "CudaRuntimeError") if hasattr(error, n))})


@dataclass(frozen=True)
class DeviceLimits:
    name: str
    max_threads: int  # threads per block
    max_shared: int  # bytes of shared memory per block (without opt-in)
    multiprocessors: int
    max_grid_y: int

    @classmethod
    def current(cls) -> "DeviceLimits":
        if _kernels().SIMULATOR:
            return cls(**SIMULATED_LIMITS)
        dev = _cuda().get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        return cls(name, int(dev.MAX_THREADS_PER_BLOCK), int(dev.MAX_SHARED_MEMORY_PER_BLOCK),
                   int(dev.MULTIPROCESSOR_COUNT), int(dev.MAX_GRID_DIM_Y))


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _elementwise_blocks(n: int, most: int) -> int:
    """Blocks of a grid-stride kernel over n elements: PER_THREAD or more elements per thread."""
    return max(1, min(-(-n // (_kernels().REDUCE_THREADS * PER_THREAD)), most))


@dataclass(frozen=True)
class Plan:
    """Launch shapes of one (model, batch, steps), derived from the sizes and checked
    against the device before anything runs."""

    rows: int  # batch rows per recurrence block (ROWS)
    blocks: int  # recurrence blocks; Bp = blocks * rows rows, the padding rows zero
    recurrence_threads: int
    loss_threads: int
    loss_blocks: int

    @property
    def padded_batch(self) -> int:
        return self.blocks * self.rows


def plan(cfg: ModelConfig, B: int, T: int, limits: DeviceLimits) -> Plan:
    """Rows per block: a block reads all of W_h at every step whatever its row count, so
    more rows make that read cheaper per row; up to 8 rows the arithmetic stays below the
    cost of that read, so 8 when the batch has them (and fewer for smaller batches, which
    wastes nothing on padding). Fewer if the backward sweep's dz_{t+1} (rows x 4H values)
    would not fit in shared memory."""
    H, size = cfg.hidden_size, cfg.np_dtype.itemsize
    rows = min(MAX_ROWS_PER_BLOCK, _next_pow2(B))
    while rows > 1 and rows * 4 * H * size > limits.max_shared:
        rows //= 2
    need = rows * 4 * H * size
    if need > limits.max_shared:
        raise ShapeError(f"hidden size {H} needs {need} bytes of shared memory per block for the backward sweep "
                         f"(4H {cfg.dtype} values), more than the {limits.max_shared} this device allows "
                         f"({limits.name}); use a hidden size of at most {limits.max_shared // (4 * size)}")
    kernels = _kernels()
    # one thread per hidden unit, in whole warps (a block below one warp still takes one)
    threads = H if H < 32 else min(-(-H // 32) * 32, kernels.MAX_RECURRENCE_THREADS, limits.max_threads)
    n_pred = (T if cfg.many_to_many else 1) * B
    loss_threads = min(kernels.LOSS_THREADS, _next_pow2(n_pred))
    blocks = -(-B // rows)
    longest = T * blocks * rows  # rows of the largest product (all steps at once)
    if kernels.gemm_shape(longest, 4 * H)[1][1] > limits.max_grid_y:  # its grid's y: row tiles
        raise ShapeError(f"a batch of {B} sequences of {T} steps gives products of {longest} rows, more than this "
                         f"device's grid allows ({limits.name}); use shorter sequences or smaller batches")
    return Plan(rows, blocks, threads, loss_threads, -(-n_pred // loss_threads))


@dataclass
class Workspace:
    """Device buffers (and pinned host staging) for one (model, batch, steps); reused across calls."""

    plan: Plan
    x_host: np.ndarray  # (T, Bp, D0) pinned staging of the minibatch, time-major, padding rows 0
    y_host: np.ndarray  # (Tout, Bp, O) targets or (Tout, Bp) class ids
    loss_host: np.ndarray  # (1,) float64
    dev: dict[str, Any]  # name -> device array (per-layer buffers are lists)

    @classmethod
    def make(cls, cfg: ModelConfig, B: int, T: int, limits: DeviceLimits) -> "Workspace":
        cuda = _cuda()
        p = plan(cfg, B, T, limits)
        L, H, D0, O, dt = cfg.num_layers, cfg.hidden_size, cfg.input_size, cfg.output_size, cfg.np_dtype
        Bp, G, Tout = p.padded_batch, 4 * cfg.hidden_size, T if cfg.many_to_many else 1
        xent = cfg.loss == "xent"
        sizes = dict(xs=T * Bp * D0, yout=Tout * Bp * O, dy=Tout * Bp * O, dh=T * Bp * H,
                     dh_last=0 if cfg.many_to_many else T * Bp * H, dcn=Bp * H, db_part=L * p.blocks * G,
                     dby_part=p.loss_blocks * O, y_real=1 if xent else Tout * Bp * O)
        per_layer = dict(gates=T * Bp * G, hs=(T + 1) * Bp * H, cs=(T + 1) * Bp * H, tcs=T * Bp * H)
        nbytes = (sum(sizes.values()) + L * sum(per_layer.values())) * dt.itemsize
        _check_free_memory(nbytes, f"the workspace of a batch of shape ({B}, {T}, {D0}) for {cfg}")
        zeros = lambda n, dtype=dt: cuda.to_device(np.zeros(max(n, 1), dtype))  # noqa: E731 (padding stays 0)
        dev: dict[str, Any] = {name: zeros(n) for name, n in sizes.items()}
        for name, n in per_layer.items():
            dev[name] = [zeros(n) for _ in range(L)]
        dev["y_class"] = zeros(Tout * Bp if xent else 1, np.int32)
        dev["loss_part"] = zeros(p.loss_blocks, np.float64)
        dev["loss"] = zeros(1, np.float64)
        y_shape = (Tout, Bp) if xent else (Tout, Bp, O)
        return cls(p, _pinned_zeros((T, Bp, D0), dt), _pinned_zeros(y_shape, np.int32 if xent else dt),
                   _pinned_zeros((1,), np.float64), dev)


def _pinned_zeros(shape, dtype) -> np.ndarray:
    a = _cuda().pinned_array(shape, dtype)
    a[...] = 0
    return a


def _check_free_memory(nbytes: int, what: str) -> None:
    """A clear error before allocating more than the device has free."""
    if _kernels().SIMULATOR:
        return
    free, total = _cuda().current_context().get_memory_info()
    if nbytes > free:
        raise DeviceError(f"{what} needs {nbytes / 2**20:.1f} MiB of GPU memory, but only {free / 2**20:.1f} MiB "
                          f"of {total / 2**20:.0f} MiB are free; use a smaller batch, shorter sequences or a "
                          "smaller model")


@dataclass
class CudaTrainState(FlatTrainState):
    """Training state on the device: ``theta``, ``grad`` and ``slots`` are device arrays
    (lstmbench.layout's flat vectors), with W_h^T for the backward sweep and the clipping
    partial sums. ``params`` stays empty: host copies come only from get_params."""

    theta_t: Any = None
    norm_part: Any = None
    grad_host: np.ndarray | None = None  # pinned host copy of the gradient, for a gradient hook


@dataclass
class ModelArrays:
    """Per-model constants on the device: the offsets of every layer's W_h and b."""

    wh_offs: Any
    b_offs: Any


class NumbaCuda(FusedBackend):
    """Numba CUDA kernels: tiled products, the recurrence in one launch per layer, fused update."""

    name = "cuda"
    description = "Numba CUDA: the whole training step on the GPU (recurrence inside the kernel, tiled products)"
    capabilities = Capabilities()

    def __init__(self) -> None:
        super().__init__()
        self._model_arrays: dict[ModelConfig, ModelArrays] = {}
        self._limits: DeviceLimits | None = None
        self._stream = None
        self._launches = 0
        self.launches_per_step: int | None = None  # kernel launches of the last training step

    # -- environment -------------------------------------------------------------------

    def availability(self):
        if find_spec("numba_cuda") is None:
            return False, f"numba-cuda is not installed; pip install 'lstmbench[cuda]', and on a GPU machine {RUNTIME}"
        cuda = _cuda()
        if _kernels().SIMULATOR:
            return True, ""
        if not cuda.is_available():
            from numba.cuda.cudadrv.driver import driver

            why = getattr(driver, "initialization_error", None)
            detail = f" ({str(why).strip().split('.')[0]})" if why else ""  # its first sentence
            return False, f"no CUDA GPU found{detail}; on a GPU machine install {RUNTIME}, or {SIMULATOR_HINT}"
        return True, ""

    def runtime_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"threads": self.threads, "launches_per_step": self.launches_per_step}
        ok, why = self.availability()
        if not ok:
            return {**info, "available": False, "reason": why}
        cuda, simulated = _cuda(), _kernels().SIMULATOR
        info["simulator"] = simulated
        if simulated:
            info.update(device=SIMULATED_LIMITS["name"], compute_capability="simulated", driver="none",
                        runtime="none")
            return info
        dev = cuda.get_current_device()
        info["device"] = self._device_limits().name
        info["multiprocessors"] = self._device_limits().multiprocessors
        info["compute_capability"] = "%d.%d" % tuple(dev.compute_capability)
        try:
            from numba.cuda.cudadrv.driver import driver

            info["driver"] = "%d.%d" % tuple(driver.get_version())
        except Exception as exc:  # a version we cannot read must not hide the rest
            info["driver"] = f"unknown ({exc})"
        try:
            info["runtime"] = "%d.%d" % tuple(cuda.runtime.get_version())
        except Exception as exc:
            info["runtime"] = f"unknown ({exc})"
        return info

    # -- plumbing ------------------------------------------------------------------------

    def _device_limits(self) -> DeviceLimits:
        if self._limits is None:
            self._limits = DeviceLimits.current()
        return self._limits

    def _model(self, cfg: ModelConfig) -> ModelArrays:
        if cfg not in self._model_arrays:
            offs = Layout.of(cfg).offs
            cuda = _cuda()
            self._model_arrays[cfg] = ModelArrays(cuda.to_device(np.ascontiguousarray(offs[:-1, 1])),
                                                  cuda.to_device(np.ascontiguousarray(offs[:-1, 2])))
        return self._model_arrays[cfg]

    def _make_workspace(self, key: tuple) -> Workspace:
        cfg, B, T = key  # FusedBackend's default key
        return Workspace.make(cfg, B, T, self._device_limits())

    def _launch(self, kernel, grid, threads: int, shared_bytes: int, *args) -> None:
        """Launch a kernels.Kernel on the backend's stream (and count it)."""
        self._launches += 1
        kernel.dispatcher[grid, threads, self._stream, shared_bytes](*args)

    def _device(self, what: str, cfg: ModelConfig, shape: tuple, fn):
        """Run ``fn`` and turn a CUDA failure into a DeviceError naming the step and the shape."""
        try:
            if self._stream is None:
                self._stream = _cuda().stream()
            return fn()
        except cuda_errors() as exc:
            raise DeviceError(f"CUDA error in {what} (batch of shape {shape}, {cfg}): {exc}") from exc

    def _to_device(self, host: np.ndarray):
        return _cuda().to_device(np.ascontiguousarray(host), stream=self._stream)

    def _stage(self, cfg: ModelConfig, ws: Workspace, x: np.ndarray, y) -> None:
        """Copy the minibatch in: time-major, into the padded layout (padding rows stay 0)."""
        B = x.shape[0]
        ws.x_host[:, :B, :] = x.transpose(1, 0, 2)
        ws.dev["xs"].copy_to_device(ws.x_host.reshape(-1), stream=self._stream)
        if y is None:
            return
        Tout = x.shape[1] if cfg.many_to_many else 1
        if cfg.loss == "xent":
            ws.y_host[:, :B] = y.reshape(B, Tout).T
            ws.dev["y_class"].copy_to_device(ws.y_host.reshape(-1), stream=self._stream)
        else:
            ws.y_host[:, :B, :] = y.reshape(B, Tout, cfg.output_size).transpose(1, 0, 2)
            ws.dev["y_real"].copy_to_device(ws.y_host.reshape(-1), stream=self._stream)

    def _gemm(self, dt, M, N, K, A, a_off, a_rs, a_cs, Bm, b_off, b_rs, b_cs, C, c_off, ldc, bias=None, bias_off=0):
        k = _kernels()
        tile, grid, threads = k.gemm_shape(M, N)
        has_bias = bias is not None
        self._launch(k.gemm_kernel(dt, *tile), grid, threads, k.gemm_shared_bytes(tile, dt.itemsize), A, a_off, a_rs,
                     a_cs, Bm, b_off, b_rs, b_cs, C, c_off, ldc, M, N, K, bias if has_bias else C, bias_off, has_bias)

    # -- the step ------------------------------------------------------------------------

    def _forward_pass(self, cfg: ModelConfig, ws: Workspace, theta, T: int) -> None:
        """Every layer's recurrence, then the head: yout = h @ W_y + b_y."""
        k, p, d = _kernels(), ws.plan, ws.dev
        L, H, D0, O, dt = cfg.num_layers, cfg.hidden_size, cfg.input_size, cfg.output_size, cfg.np_dtype
        Bp, G, offs = p.padded_batch, 4 * H, Layout.of(cfg).offs
        rows = T * Bp
        forward = k.lstm_forward_kernel(dt, p.rows)
        for layer in range(L):
            wx, wh, b = (int(o) for o in offs[layer])
            if layer == 0:  # x_t @ W_x for every step: (T*Bp, D0) @ (D0, 4H)
                self._gemm(dt, rows, G, D0, d["xs"], 0, D0, 1, theta, wx, G, 1, d["gates"][0], 0, G)
            else:  # the layer below's h_1..h_T is this layer's input
                self._gemm(dt, rows, G, H, d["hs"][layer - 1], Bp * H, H, 1, theta, wx, G, 1, d["gates"][layer], 0, G)
            self._launch(forward, p.blocks, p.recurrence_threads, p.rows * H * dt.itemsize, theta, wh, b,
                         d["gates"][layer], d["hs"][layer], d["cs"][layer], d["tcs"][layer], T, Bp, H)
        wy, by = (int(o) for o in offs[L, :2])
        top = d["hs"][L - 1]
        if cfg.many_to_many:  # every h_t: (T*Bp, H) @ (H, O)
            self._gemm(dt, rows, O, H, top, Bp * H, H, 1, theta, wy, O, 1, d["yout"], 0, O, bias=theta, bias_off=by)
        else:  # h_T only
            self._gemm(dt, Bp, O, H, top, T * Bp * H, H, 1, theta, wy, O, 1, d["yout"], 0, O, bias=theta, bias_off=by)

    def _backward_pass(self, cfg: ModelConfig, ws: Workspace, theta, theta_t, grad, B: int, T: int) -> None:
        """Loss and dy, then backpropagation through time into ``grad`` (bias sums last)."""
        k, p, d = _kernels(), ws.plan, ws.dev
        L, H, D0, O, dt = cfg.num_layers, cfg.hidden_size, cfg.input_size, cfg.output_size, cfg.np_dtype
        Bp, G, offs, model = p.padded_batch, 4 * H, Layout.of(cfg).offs, self._model(cfg)
        Tout = T if cfg.many_to_many else 1
        xent = cfg.loss == "xent"
        coef = dt.type((1.0 if xent else 2.0) / self._n_terms(cfg, B, T))
        self._launch(k.loss_kernel(dt), p.loss_blocks, p.loss_threads, 8 * p.loss_threads, d["yout"], d["y_real"],
                     d["y_class"], xent, d["dy"], d["loss_part"], d["dby_part"], B, Bp, Tout, O, coef)
        self._launch(k.transpose_kernel(dt), _elementwise_blocks(L * H * G, UPDATE_BLOCKS), k.REDUCE_THREADS, 0,
                     theta, theta_t, model.wh_offs, L, H)
        # head: dW_y = h^T dy, and dLoss/dh of the top layer = dy @ W_y^T
        wy, by = (int(o) for o in offs[L, :2])
        top = d["hs"][L - 1]
        if cfg.many_to_many:
            n_rows, h_off, dh_top, dh_off = T * Bp, Bp * H, d["dh"], 0
        else:  # only h_T feeds the head; dh_last is zero at every other step
            n_rows, h_off, dh_top, dh_off = Bp, T * Bp * H, d["dh_last"], (T - 1) * Bp * H
        self._gemm(dt, H, O, n_rows, top, h_off, 1, H, d["dy"], 0, O, 1, grad, wy, O)
        self._gemm(dt, n_rows, H, O, d["dy"], 0, O, 1, theta, wy, 1, O, dh_top, dh_off, H)
        backward = k.lstm_backward_kernel(dt, p.rows)
        rows = T * Bp
        for layer in range(L - 1, -1, -1):
            wx, wh, _ = (int(o) for o in offs[layer])
            Dl = D0 if layer == 0 else H
            dh_in = dh_top if layer == L - 1 else d["dh"]
            gates = d["gates"][layer]
            self._launch(backward, p.blocks, p.recurrence_threads, p.rows * G * dt.itemsize, theta_t, wh, gates,
                         d["cs"][layer], d["tcs"][layer], dh_in, d["dcn"], d["db_part"][layer * p.blocks * G:],
                         T, Bp, H)
            # weight gradients: one product each over every step and row
            if layer == 0:  # dW_x = x^T dz
                self._gemm(dt, D0, G, rows, d["xs"], 0, 1, D0, gates, 0, G, 1, grad, wx, G)
            else:
                self._gemm(dt, H, G, rows, d["hs"][layer - 1], Bp * H, 1, H, gates, 0, G, 1, grad, wx, G)
            # dW_h = sum_t h_{t-1}^T dz_t: h_0..h_{T-1} against dz_1..dz_T (h_0 = 0)
            self._gemm(dt, H, G, rows, d["hs"][layer], 0, 1, H, gates, 0, G, 1, grad, wh, G)
            if layer > 0:  # dLoss/dh of the layer below = dz @ W_x^T
                self._gemm(dt, rows, Dl, G, gates, 0, G, 1, theta, wx, 1, G, d["dh"], 0, H)
        n_sums = L * G + O + 1
        self._launch(k.finish_kernel(dt), -(-n_sums // k.REDUCE_THREADS), k.REDUCE_THREADS, 0, d["db_part"],
                     model.b_offs, p.blocks, G, d["dby_part"], by, O, d["loss_part"], p.loss_blocks, grad, d["loss"], L)

    def _loss_to_host(self, ws: Workspace, n_terms: int) -> float:
        ws.dev["loss"].copy_to_host(ws.loss_host, stream=self._stream)
        self._stream.synchronize()
        return float(ws.loss_host[0] / n_terms)

    @staticmethod
    def _n_terms(cfg: ModelConfig, B: int, T: int) -> int:
        Tout = T if cfg.many_to_many else 1
        return Tout * B if cfg.loss == "xent" else Tout * B * cfg.output_size

    # -- protocol ------------------------------------------------------------------------

    def _forward(self, cfg, params, x):
        B, T = x.shape[0], x.shape[1]

        def run():
            with self.workspace(cfg, x) as ws:
                theta = self._to_device(Layout.of(cfg).flatten(params, cfg.np_dtype))
                self._stage(cfg, ws, x, None)
                self._forward_pass(cfg, ws, theta, T)
                yout = ws.dev["yout"].copy_to_host(stream=self._stream)
                self._stream.synchronize()
                return yout

        Tout, O = (T if cfg.many_to_many else 1), cfg.output_size
        yout = self._device("forward", cfg, x.shape, run)
        out = yout.reshape(Tout, -1, O)[:, :B].transpose(1, 0, 2)  # (B, Tout, O)
        return np.ascontiguousarray(out if cfg.many_to_many else out[:, 0])

    def _loss_and_grads(self, cfg, params, x, y):
        layout = Layout.of(cfg)
        B, T = x.shape[0], x.shape[1]

        def run():
            with self.workspace(cfg, x) as ws:
                theta = self._to_device(layout.flatten(params, cfg.np_dtype))
                theta_t = _cuda().device_array(layout.size, cfg.np_dtype)
                grad = _cuda().device_array(layout.size, cfg.np_dtype)
                self._stage(cfg, ws, x, y)
                self._forward_pass(cfg, ws, theta, T)
                self._backward_pass(cfg, ws, theta, theta_t, grad, B, T)
                loss = self._loss_to_host(ws, self._n_terms(cfg, B, T))
                return loss, grad.copy_to_host()

        loss, grad = self._device("loss_and_grads", cfg, x.shape, run)
        return loss, {k: v.copy() for k, v in layout.views(grad).items()}

    def _init_state(self, cfg, params, opt, opt_state):
        layout = Layout.of(cfg)
        dt = cfg.np_dtype

        def run():
            cuda = _cuda()
            host = FlatTrainState.create(layout, cfg, opt, params, opt_state)  # the flat vectors, on the host
            # theta, W_h^T, the gradient and every optimizer slot
            _check_free_memory((3 + len(host.slots)) * layout.size * dt.itemsize, f"the training state of {cfg}")
            return CudaTrainState(cfg, opt, {}, {"step": np.array(opt_state["step"], dtype=np.int64)}, layout=layout,
                                  theta=cuda.to_device(host.theta),
                                  theta_t=cuda.device_array(layout.size, dt), grad=cuda.device_array(layout.size, dt),
                                  slots={s: cuda.to_device(flat) for s, flat in host.slots.items()},
                                  norm_part=cuda.to_device(np.zeros(NORM_BLOCKS, np.float64)))

        return self._device("init_state", cfg, (), run)

    # -- the fused step's kernels (lstmbench.fused) ------------------------------------------

    def _forward_and_backward(self, state: CudaTrainState, ws: Workspace, x, y) -> None:
        """The batch in, forward and backward: the gradient into state.grad, the loss on the device."""
        B, T = x.shape[0], x.shape[1]
        self._stage(state.cfg, ws, x, y)
        self._forward_pass(state.cfg, ws, state.theta, T)
        self._backward_pass(state.cfg, ws, state.theta, state.theta_t, state.grad, B, T)

    def _loss_and_gradient(self, state: CudaTrainState, x, y) -> float:
        def run():
            self._launches = 0
            with self.workspace(state.cfg, x) as ws:
                self._forward_and_backward(state, ws, x, y)
                return self._loss_to_host(ws, self._n_terms(state.cfg, x.shape[0], x.shape[1]))

        return self._device("train_step", state.cfg, x.shape, run)

    def _fused_step(self, state: CudaTrainState, x, y, scalars: StepScalars) -> float:
        """The whole step in launches on the stream; the loss is read back after the update."""
        def run():
            self._launches = 0
            with self.workspace(state.cfg, x) as ws:
                self._forward_and_backward(state, ws, x, y)
                self._launch_update(state, scalars)
                loss = self._loss_to_host(ws, self._n_terms(state.cfg, x.shape[0], x.shape[1]))
            self.launches_per_step = self._launches
            return loss

        return self._device("train_step", state.cfg, x.shape, run)

    def _update(self, state: CudaTrainState, scalars: StepScalars) -> None:
        """The update after a gradient hook; it has run when this returns."""
        def run():
            self._launch_update(state, scalars)
            self._stream.synchronize()
            self.launches_per_step = self._launches

        self._device("the update", state.cfg, (), run)

    def _launch_update(self, state: CudaTrainState, scalars: StepScalars) -> None:
        """Clipping (the norm's partial sums, then each block's factor from them) and SGD/Adam."""
        k, dt, P = _kernels(), state.cfg.np_dtype, state.layout.size
        blocks, n_part = _elementwise_blocks(P, UPDATE_BLOCKS), 0
        if scalars.clip_norm:
            n_part = _elementwise_blocks(P, NORM_BLOCKS)
            self._launch(k.sum_squares_kernel(dt), n_part, k.REDUCE_THREADS, 8 * k.REDUCE_THREADS, state.grad, P,
                         state.norm_part)
        clip, s = float(scalars.clip_norm or 0.0), scalars.in_dtype(dt)
        if s.kind == "adam":
            self._launch(k.adam_kernel(dt), blocks, k.REDUCE_THREADS, dt.itemsize, state.theta, state.grad,
                         state.slots["m"], state.slots["v"], P, state.norm_part, n_part, clip, s.beta1,
                         s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.step_size, s.bias2_sqrt, s.eps)
        else:
            buf = state.slots.get("momentum", state.grad)  # unused without momentum
            self._launch(k.sgd_kernel(dt), blocks, k.REDUCE_THREADS, dt.itemsize, state.theta, state.grad, buf, P,
                         state.norm_part, n_part, clip, s.lr, s.momentum, s.first_step, scalars.momentum > 0)

    def _gradient_to_host(self, state: CudaTrainState) -> np.ndarray:
        """The gradient in a pinned host vector, for the hook."""
        def run():
            if state.grad_host is None:
                state.grad_host = _pinned_zeros((state.layout.size,), state.cfg.np_dtype)
            state.grad.copy_to_host(state.grad_host, stream=self._stream)
            self._stream.synchronize()
            return state.grad_host

        return self._device("the gradient hook", state.cfg, (), run)

    def _gradient_from_host(self, state: CudaTrainState, host: np.ndarray) -> None:
        self._device("the gradient hook", state.cfg, (),
                     lambda: state.grad.copy_to_device(host, stream=self._stream))

    def _get_params(self, state: CudaTrainState):
        theta = self._device("get_params", state.cfg, (), lambda: state.theta.copy_to_host())
        return {k: v.copy() for k, v in state.layout.views(theta).items()}

    def _get_optimizer_state(self, state: CudaTrainState):
        out = {"step": np.array(state.opt_state["step"], dtype=np.int64)}
        for slot, flat in state.slots.items():
            host = self._device("get_optimizer_state", state.cfg, (), flat.copy_to_host)
            out.update({f"{slot}/{n}": v.copy() for n, v in state.layout.views(host).items()})
        return out

