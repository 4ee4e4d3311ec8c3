"""The C backend (registered as ``c``): the training step in plain C11, on OpenMP threads.

The C source (lstm.c, lstm_body.h) is compiled into two cffi extensions when
the package is installed: ``_lstm_c``, with 32-byte vectors in its matrix
products, and ``_lstm_c_avx512``, with 64-byte ones, which runs on CPUs with
AVX-512 (see build_ffi.py and docs/c-backend.md). They give the same bits.
Importing this module is cheap and never fails: the extension is loaded on first
use, and :meth:`CKernel.availability` says why it cannot run (not built, built
from other sources than the ones next to it, no C compiler) and what to do.

Every array handed to C goes through :func:`c_array`, which checks dtype, shape,
contiguity, alignment and writability, so a wrong call is a Python exception,
never a crash. The C side checks the sizes and the parameter layout once more.
The host side of a training step (step counter, the optimizer's per-step scalars
handed to C in lstm_optim, weight decay included, gradient hook, workspace cache) is
lstmbench.fused's. Dropout's masks are drawn in C from a hash (design.md section 9): the
host hands over only what lstmbench.fused.DropoutPlan makes of the step's DropoutDraw (a
key per site, the threshold, the scale, each kernel row's index in the global batch).
"""

from __future__ import annotations

import functools
import os
import shutil
import sysconfig
import warnings
from dataclasses import dataclass

import numpy as np

from lstmbench import Capabilities, ModelConfig
from lstmbench.errors import DTypeError, ShapeError
from lstmbench.config import DropoutDraw
from lstmbench.fused import DropoutPlan, FusedBackend, RowOrder
from lstmbench.layout import FlatTrainState, Layout
from lstmbench.optim import StepScalars
from lstmbench_backends.c_kernel import sources

REBUILD = ("`pip install -e .` in the lstmbench checkout (or `pip install --no-build-isolation -e .`, "
           "which reuses this environment's setuptools and cffi)")


PARALLEL = ("auto", "shards", "units")  # lstm_dims.parallel: LSTM_PAR_AUTO, _SHARDS, _UNITS


class LayoutError(ShapeError):
    """An array handed to the C kernel is not C-contiguous, aligned or writeable."""


class KernelError(RuntimeError):
    """The C kernel refused a call (its return code, in words)."""


# GNU OpenMP keeps a pool of threads that does not survive fork(): a forked child
# that asks it for more than one thread hangs. So the process that first ran the
# kernel on several threads is remembered, and in any other process made by fork
# from it the kernel runs on one thread (with a warning) instead of hanging.
_POOL_PID: int | None = None
_FORK_WARNED = False


def _usable_threads(requested: int) -> int:
    global _POOL_PID, _FORK_WARNED
    if requested <= 1:
        return 1
    if _POOL_PID is None:
        _POOL_PID = os.getpid()
    elif _POOL_PID != os.getpid():
        if not _FORK_WARNED:
            _FORK_WARNED = True
            warnings.warn("lstmbench C backend: this process was forked after the kernel ran on several "
                          "threads, and GNU OpenMP cannot start threads after fork(); running on 1 thread. "
                          "Use multiprocessing's 'spawn' start method to keep the thread count.",
                          RuntimeWarning, stacklevel=3)
        return 1
    return requested


@functools.cache
def _cpu_count() -> int:
    """The machine's CPUs, read once: os.cpu_count() reads sysfs at every call (14 us a step)."""
    return os.cpu_count() or 1


VECTOR_BYTES = ("auto", 32, 64)  # CKernel.vector_bytes: which build runs


def _load_extension(vector_bytes: int = 32):
    """(ffi, lib) of the extension built with ``vector_bytes``-wide vectors, or (None, reason)."""
    try:
        if vector_bytes == 64:
            from lstmbench_backends.c_kernel import _lstm_c_avx512 as ext
        else:
            from lstmbench_backends.c_kernel import _lstm_c as ext
    except ImportError as exc:
        return None, str(exc)
    return (ext.ffi, ext.lib), ""


def _compiler_found() -> bool:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(cc.split()[0]) is not None


def c_array(ffi, arr, dtype, shape, name: str, writable: bool = False):
    """A cffi pointer to ``arr`` after checking everything C relies on."""
    if not isinstance(arr, np.ndarray):
        raise DTypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.dtype(dtype):
        raise DTypeError(f"{name} has dtype {arr.dtype}, the C kernel needs {np.dtype(dtype)}")
    if arr.shape != tuple(shape):
        raise ShapeError(f"{name} has shape {arr.shape}, the C kernel needs {tuple(shape)}")
    if not arr.flags.c_contiguous or not arr.flags.aligned:
        raise LayoutError(f"{name} must be a C-contiguous, aligned array (use np.ascontiguousarray)")
    if writable and not arr.flags.writeable:
        raise LayoutError(f"{name} is read-only; the C kernel writes into it")
    ctype = {np.float32: "float[]", np.float64: "double[]", np.int64: "int64_t[]", np.uint8: "char[]",
             np.uint32: "uint32_t[]"}[
        np.dtype(dtype).type
    ]
    return ffi.from_buffer(ctype, arr, require_writable=writable)


@dataclass
class Workspace:
    """The C kernel's scratch memory for one (config, batch, steps) shape, for up to ``capacity`` threads."""

    block: np.ndarray  # uint8; C carves and aligns its buffers inside
    dims: object  # the lstm_dims struct (cffi)
    plan: str  # how the threads share a step of this shape: "shards" or "units" (lstm_parallel_plan)
    capacity: int  # the most threads it has room for
    shard_rows: int  # rows per batch shard (B: one shard), which RowOrder deals rows of different lengths to
    packed_for: tuple | None = None  # (PreparedForward, whether x was not one-hot) whose weights it holds packed


class CKernel(FusedBackend):
    """Batch shards on OpenMP threads, own register-blocked matrix products, fused Adam/AdamW/SGD, all in C."""

    name = "c"
    description = "C11 via cffi: batch shards on OpenMP threads, own vectorised GEMM, fused training step"
    capabilities = Capabilities(sequences=True, dropout=True)

    def __init__(self) -> None:
        super().__init__()
        self._exts: dict[int, tuple] = {}  # vector bytes -> _load_extension's answer
        self.source_dir = sources.HERE  # where the sources checked against the binary live
        self._verified = None  # the source_dir whose sources matched the binary
        # How the threads share a step: "auto" (lstm.c decides by the shape), "shards" (each
        # thread its own batch rows) or "units" (one shard, the threads share its hidden
        # units); the last two for measurements (tools/ablation_parallel.py).
        self.parallel = "auto"
        self.last_plan: str | None = None  # what the last call ran
        self.shard_rows = 0  # rows per batch shard; 0: lstm.c's choice by the shape (for measurements)
        # The micro-kernel's vectors: 32 or 64 bytes (AVX-512 only); "auto": 64 where the CPU
        # has AVX-512 and the 64-byte build exists. Both give the same bits; 32 and 64 are for
        # measurements (tools/c_vector_width.py).
        self.vector_bytes: int | str = "auto"
        self._auto_width: int | None = None

    # -- environment -------------------------------------------------------------------

    def _load(self, width: int):
        if width not in self._exts:
            self._exts[width] = _load_extension(width)
        return self._exts[width]

    def _width(self) -> int:
        """The vector width that runs: ``vector_bytes``, or what "auto" picks."""
        if self.vector_bytes not in VECTOR_BYTES:
            raise ValueError(f"vector_bytes must be one of {', '.join(map(str, VECTOR_BYTES))}, "
                             f"got {self.vector_bytes!r}")
        if self.vector_bytes != "auto":
            return self.vector_bytes
        if self._auto_width is None:
            narrow, _ = self._load(32)
            wide = narrow is not None and narrow[1].lstm_cpu_has_avx512() and self._load(64)[0] is not None
            self._auto_width = 64 if wide else 32
        return self._auto_width

    def _extension(self):
        return self._load(self._width())

    def availability(self):
        ext, why = self._extension()
        if ext is not None and self._width() == 64 and not ext[1].lstm_cpu_has_avx512():
            return False, "vector_bytes=64 needs a CPU with AVX-512, and this one has none; use 32 or auto"
        if ext is None and self._width() == 64:
            return False, (f"the 64-byte (AVX-512) build of the C extension is not there ({why}); "
                           f"run {REBUILD}, or use vector_bytes 32 or auto")
        if ext is None:
            if not _compiler_found():
                return False, ("the C extension is not built and no C compiler was found; install gcc "
                               f"(e.g. apt-get install gcc), then run {REBUILD}")
            return False, (f"the C extension is not built ({why}); run {REBUILD} "
                           "(add -v to see the compiler's messages)")
        ffi, lib = ext
        built = ffi.string(lib.lstm_source_hash()).decode()
        now = sources.source_hash(self.source_dir)
        if built != now:
            return False, (f"the C extension is stale: it was built from sources with hash {built[:12]}, "
                           f"the sources in {self.source_dir} now hash to {now[:12]}; rebuild with {REBUILD}")
        return True, ""

    def _lib(self):
        """(ffi, lib), checked against the sources once per backend object and source folder
        (hashing the sources on every call would cost more than a small training step)."""
        checked = (self.source_dir, self._width())
        if self._verified != checked:
            ok, why = self.availability()
            if not ok:
                from lstmbench.errors import BackendUnavailableError

                raise BackendUnavailableError(f"backend 'c' is not available: {why}")
            self._verified = checked
        return self._extension()[0]

    def runtime_info(self):
        info = {"threads": self.threads}
        if self.threads > 1 and _POOL_PID is not None and _POOL_PID != os.getpid():
            info["threads_used"] = 1  # a forked child of a process that ran OpenMP threads (see _usable_threads)
        ext, _ = self._extension()
        if ext is not None:
            ffi, lib = ext
            info.update(openmp=bool(lib.lstm_openmp()), isa=ffi.string(lib.lstm_isa()).decode(),
                        vector_bytes=lib.lstm_vector_bytes(), build_flags=ffi.string(lib.lstm_build_info()).decode())
        info["parallel"] = self.parallel if self.last_plan is None else f"{self.parallel}: {self.last_plan} last"
        return info

    # -- plumbing ------------------------------------------------------------------------

    def _workspace_key(self, cfg: ModelConfig, x: np.ndarray) -> tuple:
        """The workspace's layout depends on all of these."""
        _, lib = self._lib()
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {', '.join(PARALLEL)}, got {self.parallel!r}")
        # room for the team's per-thread buffers of up to this many threads; the count each
        # call runs on is set per call (it never changes the plan, so never the bits)
        capacity = max(_usable_threads(self.threads), _cpu_count())
        return (cfg, x.shape[0], x.shape[1], capacity, self.parallel, self.shard_rows, lib.lstm_vector_bytes())

    def _make_workspace(self, key: tuple) -> Workspace:
        cfg, B, T, threads, parallel, shard_rows, _ = key
        ffi, lib = self._lib()
        dims = ffi.new("lstm_dims *")
        dims.batch, dims.steps, dims.input_size = B, T, cfg.input_size
        dims.hidden_size, dims.output_size, dims.layers = cfg.hidden_size, cfg.output_size, cfg.num_layers
        dims.many_to_many, dims.xent, dims.threads = int(cfg.many_to_many), int(cfg.loss == "xent"), threads
        dims.parallel, dims.shard_rows = PARALLEL.index(parallel), shard_rows
        dims.dropout = int(cfg.dropout > 0)  # room for the masked layer outputs (none at p = 0)
        nbytes = lib.lstm_workspace_bytes(dims, cfg.np_dtype.itemsize)
        if nbytes < 0:
            raise ShapeError(f"the C kernel cannot hold a batch of shape ({B}, {T}, {cfg.input_size}) for {cfg}")
        plan = PARALLEL[lib.lstm_parallel_plan(dims, cfg.np_dtype.itemsize)]  # depends on the dims alone
        # zeros: buffer padding the kernel never writes stays finite
        return Workspace(np.zeros(nbytes, np.uint8), dims, plan, threads,
                         lib.lstm_shard_rows(dims, cfg.np_dtype.itemsize))

    @staticmethod
    def _check(lib, ffi, code: int) -> None:
        if code != 0:
            raise KernelError(f"the C kernel refused the call: {ffi.string(lib.lstm_error_message(code)).decode()}")

    def _targets(self, cfg: ModelConfig, x: np.ndarray, y):
        """(y as reals or None, class ids or None) shaped as C reads them."""
        B, T = x.shape[0], x.shape[1]
        Tout = T if cfg.many_to_many else 1
        if cfg.loss == "xent":
            return None, np.ascontiguousarray(y, np.int64).reshape(B, Tout)
        return np.ascontiguousarray(y).reshape(B, Tout, cfg.output_size), None

    def _call(self, what: str, cfg: ModelConfig, theta: np.ndarray, x: np.ndarray, y=None, *, y_hat=None,
              grad=None, opt=None, slots=(None, None), order: RowOrder | None = None, final=None,
              prepared: object = None, dropout: DropoutDraw | None = None) -> float:
        """Validate every array, then run one C entry point ("forward", "loss_grad", "train_step").
        x, y, theta, grad, y_hat and slots must already be contiguous arrays of the model's dtype.
        ``order``: the rows sorted longest first with their lengths and initial state (x, y and
        y_hat are in its order); ``final``: (h_n, c_n) arrays (L, B, H) for the final state;
        ``prepared``: the PreparedForward making this call (its weights stay packed between calls);
        ``dropout``: the masks of a training step (loss_grad, train_step) of a model with p > 0."""
        ffi, lib = self._lib()
        dt, layout = cfg.np_dtype, Layout.of(cfg)
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise ShapeError(f"x must be a (batch, steps, {cfg.input_size}) array")
        B, T = x.shape[0], x.shape[1]
        Tout = T if cfg.many_to_many else 1
        sfx = "f32" if dt == np.float32 else "f64"
        # every pointer is checked before the workspace (or anything else) is touched
        p_x = c_array(ffi, x, dt, (B, T, cfg.input_size), "x")
        p_theta = c_array(ffi, theta, dt, (layout.size,), "theta", writable=what == "train_step")
        offs = np.ascontiguousarray(layout.offs, np.int64)
        p_offs = c_array(ffi, offs, np.int64, (cfg.num_layers + 1, 3), "offs")
        if what != "forward":
            y_real, classes = self._targets(cfg, x, y)
            p_y = ffi.NULL if y_real is None else c_array(ffi, y_real, dt, (B, Tout, cfg.output_size), "y")
            p_cls = ffi.NULL if classes is None else c_array(ffi, classes, np.int64, (B, Tout), "y (class ids)")
            p_grad = c_array(ffi, grad, dt, (layout.size,), "grad", writable=True)
        else:
            p_out = c_array(ffi, y_hat, dt, (B, Tout, cfg.output_size), "y_hat", writable=True)
        if what == "train_step":
            p_s = [ffi.NULL if s is None else c_array(ffi, s, dt, (layout.size,), "optimizer slot", writable=True)
                   for s in slots]
        sequences = self._sequence_pointers(ffi, cfg, x, order, final)
        if dropout is not None and what != "forward":  # a training step's masks (drawn in C)
            sequences.update(_dropout_fields(ffi, cfg, dropout, order or RowOrder.of(x)))
        lengths = None if order is None else order.lengths
        symbols = one_hot_symbols(x, lengths)  # one-hot input: read as symbol ids (gathers instead of products)
        with self.workspace(cfg, x) as ws:
            self.last_plan = ws.plan
            ws.dims.threads = min(_usable_threads(self.threads), ws.capacity)
            ws.dims.x_symbols = ffi.NULL if symbols is None else c_array(ffi, symbols, np.int64, (B, T), "x symbols")
            for name, pointer in sequences.items():
                setattr(ws.dims, name, pointer)
            # one-hot input leaves layer 0's W_x unpacked: what is packed depends on it too
            packing = None if prepared is None else (prepared, symbols is None)
            ws.dims.reuse_packed = int(packing is not None and ws.packed_for == packing)
            ws.packed_for = None  # until the call has packed this theta's weights
            try:
                p_ws = c_array(ffi, ws.block, np.uint8, ws.block.shape, "workspace", writable=True)
                loss = ffi.new("double *")
                if what == "forward":
                    code = getattr(lib, f"lstm_forward_{sfx}")(ws.dims, p_offs, layout.size, p_theta, p_x, p_out,
                                                               p_ws, ws.block.size)
                elif what == "loss_grad":
                    code = getattr(lib, f"lstm_loss_grad_{sfx}")(ws.dims, p_offs, layout.size, p_theta, p_x, p_y,
                                                                 p_cls, p_grad, loss, p_ws, ws.block.size)
                else:
                    code = getattr(lib, f"lstm_train_step_{sfx}")(ws.dims, opt, p_offs, layout.size, p_theta,
                                                                  p_s[0], p_s[1], p_x, p_y, p_cls, p_grad, loss, p_ws,
                                                                  ws.block.size)
                self._check(lib, ffi, code)
                ws.packed_for = packing if what == "forward" else None
            finally:
                for name in ("x_symbols", *sequences):  # these arrays (and dropout's scalars) are this call's
                    setattr(ws.dims, name, 0 if name in _DROPOUT_SCALARS else ffi.NULL)
        return float(loss[0])

    @staticmethod
    def _sequence_pointers(ffi, cfg: ModelConfig, x: np.ndarray, order: RowOrder | None, final) -> dict:
        """lstm_dims' lengths, h0, c0, hn, cn for this call (checked), by name: those the call has.
        Lengths that are all T are left out: the kernel then runs its full-length path."""
        B, T = x.shape[0], x.shape[1]
        shape, dt = (cfg.num_layers, B, cfg.hidden_size), cfg.np_dtype
        out = {}  # (unset fields stay NULL: the workspace's dims are reset after every call)
        if order is not None and order.lengths.min() < T:
            out["lengths"] = c_array(ffi, order.lengths, np.int64, (B,), "lengths")
        if order is not None and order.state is not None:
            out["h0"], out["c0"] = (c_array(ffi, np.ascontiguousarray(s), dt, shape, name)
                                    for s, name in zip(order.state, ("h0", "c0")))
        if final is not None:
            out["hn"], out["cn"] = (c_array(ffi, s, dt, shape, name, writable=True) for s, name in zip(final, ("h_n", "c_n")))
        return out

    # -- protocol ------------------------------------------------------------------------

    def _forward(self, cfg, params, x, return_state=False, prepared=None, **sequences):
        theta = Layout.of(cfg).flatten(params, cfg.np_dtype) if prepared is None else prepared.theta
        order = self._row_order(cfg, x, sequences)
        B, T = x.shape[0], x.shape[1]
        out = np.empty((B, T if cfg.many_to_many else 1, cfg.output_size), dtype=cfg.np_dtype)
        final = _state_arrays(cfg, B) if return_state else None
        self._call("forward", cfg, theta, _rows(order, x), y_hat=out, order=order, final=final, prepared=prepared)
        y = order.restore(out if cfg.many_to_many else out[:, 0])
        return (y, _restored(order, final)) if return_state else y

    def _generate(self, cfg, params, prime: np.ndarray, uniforms: np.ndarray, temperature: float) -> np.ndarray:
        """Protocol.generate in one C call (lstm_generate): the prime and every symbol drawn are
        one forward step each from the state the last left, the weights packed once, the draws
        in C at the host's uniforms (the same inverse CDF as lstmbench.protocol.draw_symbol)."""
        ffi, lib = self._lib()
        dt, layout = cfg.np_dtype, Layout.of(cfg)
        theta = layout.flatten(params, dt)
        offs = np.ascontiguousarray(layout.offs, np.int64)
        prime = np.ascontiguousarray(prime, np.int64).reshape(-1, 1)  # (P, B = 1): time-major
        uniforms = np.ascontiguousarray(uniforms, np.float64).reshape(-1, 1)
        out = np.empty(uniforms.shape, np.int64)
        state = _state_arrays(cfg, 1)
        for s in state:
            s.fill(0)
        P, n, shape = len(prime), len(uniforms), (cfg.num_layers, 1, cfg.hidden_size)
        with self.workspace(cfg, np.empty((1, 1, cfg.input_size), dt)) as ws:
            self.last_plan = ws.plan
            ws.packed_for = None  # the call packs its own weights into the block
            ws.dims.threads = min(_usable_threads(self.threads), ws.capacity)
            generate = lib.lstm_generate_f32 if dt == np.float32 else lib.lstm_generate_f64
            code = generate(ws.dims, c_array(ffi, offs, np.int64, offs.shape, "offs"), layout.size,
                            c_array(ffi, theta, dt, theta.shape, "theta"), c_array(ffi, prime, np.int64, (P, 1), "prime"),
                            P, c_array(ffi, uniforms, np.float64, (n, 1), "uniforms"), n, float(temperature),
                            c_array(ffi, out, np.int64, (n, 1), "symbols", writable=True),
                            *(c_array(ffi, s, dt, shape, name, writable=True) for s, name in zip(state, "hc")),
                            c_array(ffi, ws.block, np.uint8, ws.block.shape, "workspace", writable=True),
                            ws.block.size)
            self._check(lib, ffi, code)
        return out[:, 0]

    def _row_order(self, cfg: ModelConfig, x: np.ndarray, sequences: dict) -> RowOrder:
        """The rows in the order the kernel takes them: longest first, dealt to its shards."""
        if sequences.get("lengths") is None:
            return RowOrder.of(x, **sequences)
        with self.workspace(cfg, x) as ws:
            return RowOrder.of(x, shard_rows=ws.shard_rows, **sequences)

    def _prepared_forward(self, cfg, params):
        """_forward with these parameters flattened once, and packed once per batch shape."""
        return PreparedForward(self, cfg, Layout.of(cfg).flatten(params, cfg.np_dtype))

    def _loss_and_grads(self, cfg, params, x, y, dropout=None, **sequences):
        layout = Layout.of(cfg)
        grad = np.empty(layout.size, dtype=cfg.np_dtype)
        order = self._row_order(cfg, x, sequences)
        loss = self._call("loss_grad", cfg, layout.flatten(params, cfg.np_dtype), _rows(order, x), _rows(order, y),
                          grad=grad, order=order, dropout=dropout)
        return loss, {k: v.copy() for k, v in layout.views(grad).items()}

    # -- the fused step's kernels (lstmbench.fused) ------------------------------------------

    def _loss_and_gradient(self, state: FlatTrainState, x, y, return_state=False, dropout=None, **sequences):
        order = self._row_order(state.cfg, x, sequences)
        final = _state_arrays(state.cfg, x.shape[0]) if return_state else None
        loss = self._call("loss_grad", state.cfg, state.theta, _rows(order, x), _rows(order, y), grad=state.grad,
                          order=order, final=final, dropout=dropout)
        return (loss, _restored(order, final)) if return_state else loss

    def _fused_step(self, state: FlatTrainState, x, y, scalars: StepScalars, return_state=False, dropout=None,
                    **sequences):
        """One C call: forward, backward, clipping, update (the final state is the forward's,
        from the parameters before the update, with this step's dropout masks)."""
        ffi, _ = self._lib()
        order = self._row_order(state.cfg, x, sequences)
        final = _state_arrays(state.cfg, x.shape[0]) if return_state else None
        loss = self._call("train_step", state.cfg, state.theta, _rows(order, x), _rows(order, y), grad=state.grad,
                          opt=c_optim(ffi, scalars), slots=_optimizer_slots(state), order=order, final=final,
                          dropout=dropout)
        return (loss, _restored(order, final)) if return_state else loss

    def _update(self, state: FlatTrainState, scalars: StepScalars) -> None:
        """Clipping (from this gradient's norm) and the update alone: lstm_update."""
        ffi, lib = self._lib()
        dt, P = state.cfg.np_dtype, state.theta.size
        p_s = [ffi.NULL if s is None else c_array(ffi, s, dt, (P,), "optimizer slot", writable=True)
               for s in _optimizer_slots(state)]
        update = lib.lstm_update_f32 if dt == np.float32 else lib.lstm_update_f64
        self._check(lib, ffi, update(c_optim(ffi, scalars), P, _usable_threads(self.threads),
                                     c_array(ffi, state.theta, dt, (P,), "theta", writable=True), p_s[0], p_s[1],
                                     c_array(ffi, state.grad, dt, (P,), "grad")))


@dataclass(eq=False)
class PreparedForward:
    """Forward passes of one flat parameter vector (Backend.stepper): the kernel packs its
    weights into a workspace on the first call of a batch shape and reuses them after."""

    backend: CKernel
    cfg: ModelConfig
    theta: np.ndarray

    def __call__(self, x, **sequences):
        return self.backend._forward(self.cfg, None, x, prepared=self, **sequences)


def _rows(order: RowOrder, a: np.ndarray) -> np.ndarray:
    """``a``'s rows in the kernel's order (longest first), contiguous."""
    return np.ascontiguousarray(order.rows(a))


def _state_arrays(cfg: ModelConfig, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Room for a final state (h_n, c_n), each (L, B, H)."""
    return tuple(np.empty((cfg.num_layers, B, cfg.hidden_size), cfg.np_dtype) for _ in "hc")


def _restored(order: RowOrder, final) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's final state back in the batch's row order."""
    return tuple(order.restore(s, axis=1) for s in final)


#: lstm_dims' dropout fields that are numbers, not pointers
_DROPOUT_SCALARS = ("drop_threshold", "drop_scale")


def _dropout_fields(ffi, cfg: ModelConfig, draw: DropoutDraw | None, order: RowOrder) -> dict:
    """lstm_dims' dropout fields for a call with ``draw`` (by name; none without dropout): the
    per-site keys and each kernel row's global index as checked arrays, the threshold, the scale.
    The masks themselves are drawn in C."""
    if draw is None or cfg.dropout == 0:
        return {}
    plan = DropoutPlan.of(cfg, draw, order)
    keys = np.ascontiguousarray(plan.keys, np.uint32)
    rows = np.ascontiguousarray(plan.rows, np.uint32)
    return {"drop_keys": c_array(ffi, keys, np.uint32, (cfg.num_layers + 1,), "dropout keys"),
            "drop_rows": c_array(ffi, rows, np.uint32, (len(order.lengths),), "dropout rows"),
            "drop_threshold": plan.threshold, "drop_scale": float(plan.scale)}


def c_optim(ffi, scalars: StepScalars):
    """The lstm_optim struct of one step: the host's scalars (double; C rounds them to its dtype).
    AdamW is Adam with a decay_factor other than 1; SGD and Adam may have an l2 term."""
    opt = ffi.new("lstm_optim *")
    opt.adam, opt.first_step = int(scalars.kind in ("adam", "adamw")), int(scalars.first_step)
    opt.lr, opt.momentum, opt.eps = scalars.lr, scalars.momentum, scalars.eps
    opt.beta1, opt.beta2 = scalars.beta1, scalars.beta2
    opt.one_minus_beta1, opt.one_minus_beta2 = scalars.one_minus_beta1, scalars.one_minus_beta2
    opt.step_size, opt.bias2_sqrt = scalars.step_size, scalars.bias2_sqrt
    opt.clip_norm = scalars.clip_norm or 0.0  # <= 0: no clipping
    opt.l2, opt.decay_factor = scalars.l2, scalars.decay_factor
    return opt


def _optimizer_slots(state: FlatTrainState) -> tuple:
    """The kernel's slot1, slot2: Adam's (and AdamW's) m and v, or SGD's momentum buffer (None
    without momentum)."""
    if state.opt.kind in ("adam", "adamw"):
        return state.slots["m"], state.slots["v"]
    return state.slots.get("momentum"), None


def one_hot_symbols(x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray | None:
    """(B, T) symbol ids if every x_t a row takes (t < its length) is a one-hot vector (exactly
    one 1, the rest 0), else None; padded steps get symbol 0, which the kernel never reads.
    Cheap to refuse: most inputs fail on the first vector."""
    if x.shape[2] < 2 or x[0, 0].sum() != 1:
        return None
    if lengths is not None and lengths.min() < x.shape[1]:
        valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
        x = np.where(valid[:, :, None], x, np.eye(1, x.shape[2], dtype=x.dtype)[0])  # padding -> symbol 0
    if not (np.count_nonzero(x) == x.shape[0] * x.shape[1] and np.all(x.sum(axis=2) == 1)
            and np.all((x == 0) | (x == 1))):
        return None
    return np.ascontiguousarray(np.argmax(x, axis=2), dtype=np.int64)


def aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``alignment``-byte boundary
    (numpy only promises 16; the kernel's own buffers are all cache-line aligned)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.empty(n * dtype.itemsize + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


_MATMUL_BACKENDS: dict = {}  # vector_bytes -> a CKernel, checked once against the sources


def matmul(a: np.ndarray, b: np.ndarray, transpose_a: bool = False, pack_b: bool = True, repeats: int = 1,
           n: int | None = None, vector_bytes: int | str = "auto") -> np.ndarray:
    """C = A @ B (or A^T @ B) with the kernel's own matrix product, for tests and the GEMM benchmark.

    a: (M, K), or (K, M) with ``transpose_a``; b: (K, N) row-major. With
    ``pack_b=False`` B is read in place, which needs b's row length to be at least
    N rounded up to the panel width: pass the real column count as ``n``.
    ``vector_bytes``: which build runs, as :attr:`CKernel.vector_bytes`.
    """
    if vector_bytes not in _MATMUL_BACKENDS:
        _MATMUL_BACKENDS[vector_bytes] = CKernel()
        _MATMUL_BACKENDS[vector_bytes].vector_bytes = vector_bytes
    ffi, lib = _MATMUL_BACKENDS[vector_bytes]._lib()
    dt = a.dtype
    if dt not in (np.float32, np.float64):
        raise DTypeError(f"matmul takes float32 or float64, got {dt}")
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError("matmul takes 2-D arrays")
    M, K = (a.shape[1], a.shape[0]) if transpose_a else a.shape
    N = b.shape[1] if n is None else n
    if b.shape[0] != K or not 1 <= N <= b.shape[1]:
        raise ShapeError(f"shapes {a.shape}{'^T' if transpose_a else ''} and {b.shape} (N={N}) do not multiply")
    c = aligned_empty((M, N), dt)
    p_a = c_array(ffi, a, dt, a.shape, "a")
    p_b = c_array(ffi, b, dt, b.shape, "b")
    p_c = c_array(ffi, c, dt, c.shape, "c", writable=True)
    ws = np.empty(max(1, lib.lstm_matmul_workspace_bytes(K, N, dt.itemsize)), np.uint8)
    ars, acs = (1, M) if transpose_a else (K, 1)
    fn = lib.lstm_matmul_f32 if dt == np.float32 else lib.lstm_matmul_f64
    code = fn(M, N, K, p_a, ars, acs, p_b, b.shape[1], int(pack_b), p_c, N,
              c_array(ffi, ws, np.uint8, ws.shape, "ws", writable=True), ws.size, repeats)
    CKernel._check(lib, ffi, code)
    return c
