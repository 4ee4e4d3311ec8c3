"""The training loop and checkpoints: exact resume, Ctrl-C, divergence, early
stopping, atomic files and clear errors. All on the NumPy reference backend
with a tiny model on a noisy sine, so every run takes milliseconds."""

import gc
import io
import json
import math
import re
import signal
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import lstmbench as lb
from lstmbench import CheckpointError, DivergenceError, ModelConfig, NonFiniteError, OptimizerConfig, ShapeError
from lstmbench.training.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from lstmbench.data import make_windows, noisy_sine_mixture
from lstmbench.errors import ConfigError
from lstmbench.training.loop import BEST_CHECKPOINT, LAST_CHECKPOINT, RunConfig, train
from lstmbench.training.schedule import ScheduleConfig
from lstmbench_backends.reference import NumpyReference

CFG = ModelConfig(input_size=1, hidden_size=6, output_size=1)
BATCH = 16
ADAM = OptimizerConfig("adam", lr=0.02)
SGD_MOMENTUM = OptimizerConfig("sgd", lr=0.1, momentum=0.9, clip_norm=1.0)


@pytest.fixture(scope="module")
def data():
    ds = make_windows(noisy_sine_mixture(120, seed=0), window=6)
    assert ds.train.x.shape == (78, 6, 1) and ds.train.y.shape == (78, 1)  # 5 batches of <= 16
    return (ds.train.x, ds.train.y), (ds.val.x, ds.val.y)


BATCHES_PER_EPOCH = 5


def run_train(data, out_dir=None, *, epochs, opt=ADAM, cfg=CFG, backend=None, resume=None, seed=3,
              batch_size=BATCH, params=None, **run_kwargs):
    (train_data, val_data) = data
    if cfg.dtype != "float64":
        train_data = tuple(a.astype(cfg.dtype) for a in train_data)
        val_data = tuple(a.astype(cfg.dtype) for a in val_data)
    on_epoch = run_kwargs.pop("on_epoch", None)
    run = RunConfig(epochs=epochs, batch_size=batch_size, seed=seed, out_dir=out_dir, progress=False, **run_kwargs)
    return train(backend or NumpyReference(), cfg, opt, params if params is not None else lb.init_params(cfg, 1),
                 train_data, val_data, run, resume=resume, on_epoch=on_epoch)


def assert_same_bits(a: dict, b: dict):
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def without_seconds(history):
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in history]


def leftover_temp_files(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- exact resume ----------------------------------------------------------------


@pytest.mark.parametrize(
    "opt,dtype",
    [(ADAM, "float64"), (SGD_MOMENTUM, "float64"), (ADAM, "float32")],
    ids=["adam", "sgd-momentum", "adam-float32"],
)
def test_resume_equals_uninterrupted(data, tmp_path, opt, dtype):
    cfg = ModelConfig(1, 6, 1, dtype=dtype)
    a = run_train(data, tmp_path / "a", epochs=6, opt=opt, cfg=cfg)
    assert a.stop_reason == "completed" and len(a.history) == 6

    first = run_train(data, tmp_path / "b", epochs=3, opt=opt, cfg=cfg)
    assert first.stop_reason == "completed" and len(first.history) == 3
    ckpt = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)
    assert ckpt.meta["progress"]["epoch"] == 3 and ckpt.meta["progress"]["batch"] == 0
    b = run_train(data, tmp_path / "b", epochs=6, opt=opt, cfg=cfg, resume=ckpt)
    assert b.stop_reason == "completed"

    last_a = load_checkpoint(tmp_path / "a" / LAST_CHECKPOINT)
    last_b = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)
    assert_same_bits(last_a.params, last_b.params)
    assert_same_bits(last_a.opt_state, last_b.opt_state)
    assert int(last_b.opt_state["step"]) == 6 * BATCHES_PER_EPOCH
    assert_same_bits(a.last_params, b.last_params)
    assert_same_bits(a.last_params, last_a.params)
    assert without_seconds(a.history) == without_seconds(b.history)
    assert (a.best_epoch, a.best_val_loss) == (b.best_epoch, b.best_val_loss)
    assert_same_bits(a.params, b.params)
    assert_same_bits(load_checkpoint(tmp_path / "a" / BEST_CHECKPOINT).params,
                     load_checkpoint(tmp_path / "b" / BEST_CHECKPOINT).params)
    # and it did train
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]
    assert not np.array_equal(a.last_params["l0.W_h"], lb.init_params(cfg, 1)["l0.W_h"])


@pytest.mark.parametrize("schedule", [
    ScheduleConfig("cosine", warmup_steps=4, lr_min=1e-3),
    ScheduleConfig("plateau", plateau_patience=0, plateau_factor=0.5),
    ScheduleConfig("step", step_size=2, gamma=0.5),
], ids=lambda s: s.kind)
def test_resume_with_dropout_weight_decay_and_a_schedule_equals_uninterrupted(data, tmp_path, schedule):
    """The schedule's position (the plateau's best loss and bad epochs, the step count) and the
    dropout masks (seed and step) continue exactly across a resume, Ctrl-C mid-epoch included."""
    cfg = ModelConfig(1, 6, 1, num_layers=2, dropout=0.3)
    opt = OptimizerConfig("adamw", lr=0.02, weight_decay=0.05)
    kwargs = dict(epochs=5, opt=opt, cfg=cfg, schedule=schedule)
    straight = run_train(data, tmp_path / "a", **kwargs)
    stopped = run_train(data, tmp_path / "b", backend=InterruptAt(2 * BATCHES_PER_EPOCH + 2), **kwargs)
    assert stopped.stop_reason == "interrupted"
    resumed = run_train(data, tmp_path / "b", resume=load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT), **kwargs)
    assert_same_bits(resumed.last_params, straight.last_params)
    assert without_seconds(resumed.history) == without_seconds(straight.history)
    rates = [h["lr"] for h in straight.history]
    assert len(set(rates)) > 1 or schedule.kind == "plateau"  # the rate moved (a plateau may not have come)
    plain = run_train(data, tmp_path / "c", epochs=5, opt=opt, cfg=replace(cfg, dropout=0.0), schedule=schedule)
    assert not np.array_equal(plain.last_params["l1.W_x"], straight.last_params["l1.W_x"])  # dropout did something


def test_the_learning_rate_of_each_epoch_is_recorded(data):
    result = run_train(data, epochs=3, schedule=ScheduleConfig("step", step_size=1, gamma=0.5))
    assert [h["lr"] for h in result.history] == [0.02, 0.01, 0.005]


def test_a_resume_with_another_schedule_is_refused(data, tmp_path):
    run_train(data, tmp_path, epochs=2)
    with pytest.raises(CheckpointError, match="learning-rate schedule"):
        run_train(data, tmp_path, epochs=4, resume=load_checkpoint(tmp_path / LAST_CHECKPOINT),
                  schedule=ScheduleConfig("cosine"))


def test_resume_is_sensitive_to_the_optimizer_state(data, tmp_path):
    """The comparison above can fail: resuming without the optimizer state (a fresh
    Adam) from the same parameters does not give the same bits."""
    a = run_train(data, tmp_path / "a", epochs=4)
    run_train(data, tmp_path / "b", epochs=2)
    ckpt = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)
    ckpt.opt_state = {k: np.zeros_like(v) for k, v in ckpt.opt_state.items()}
    b = run_train(data, tmp_path / "b", epochs=4, resume=ckpt)
    assert not np.array_equal(a.last_params["l0.W_h"], b.last_params["l0.W_h"])


# --- Ctrl-C ----------------------------------------------------------------------


class InterruptAt(NumpyReference):
    """Ctrl-C arriving while the n-th training step is about to run."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def train_step(self, state, x, y, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return super().train_step(state, x, y, **kwargs)


def test_ctrl_c_mid_epoch_then_resume(data, tmp_path):
    n = BATCHES_PER_EPOCH + 3  # third batch of the second epoch
    stopped = run_train(data, tmp_path / "b", epochs=4, backend=InterruptAt(n))
    assert stopped.stop_reason == "interrupted"
    assert len(stopped.history) == 1
    ckpt = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)
    assert (ckpt.meta["progress"]["epoch"], ckpt.meta["progress"]["batch"]) == (1, 2)
    assert int(ckpt.opt_state["step"]) == n - 1
    assert ckpt.meta["progress"]["loss_sum"] > 0
    assert_same_bits(ckpt.params, stopped.last_params)
    assert leftover_temp_files(tmp_path / "b") == []

    resumed = run_train(data, tmp_path / "b", epochs=4, resume=ckpt)
    straight = run_train(data, tmp_path / "a", epochs=4)
    assert resumed.stop_reason == "completed"
    assert_same_bits(resumed.last_params, straight.last_params)
    assert_same_bits(resumed.params, straight.params)
    assert without_seconds(resumed.history) == without_seconds(straight.history)
    assert_same_bits(load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT).opt_state,
                     load_checkpoint(tmp_path / "a" / LAST_CHECKPOINT).opt_state)


def test_ctrl_c_in_first_epoch_without_out_dir(data):
    result = run_train(data, None, epochs=3, backend=InterruptAt(2))
    assert result.stop_reason == "interrupted" and result.history == []
    assert result.best_epoch == 0 and math.isinf(result.best_val_loss)


class SignalAfterUpdate(NumpyReference):
    """A real signal delivered after the n-th step has updated the parameters but
    before train_step returns (the update is the last part of the step)."""

    def __init__(self, n, sig=signal.SIGINT):
        super().__init__()
        self.n, self.sig, self.calls = n, sig, 0

    def train_step(self, state, x, y):
        self.calls += 1
        loss = super().train_step(state, x, y)
        if self.calls == self.n:
            signal.raise_signal(self.sig)
        return loss


class _Unhandled(Exception):
    pass


def _unhandled(signum, frame):
    raise _Unhandled(f"signal {signum} reached the test: training did not take it")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and a scheduler's stop
def test_signal_after_update_then_resume(data, tmp_path, sig):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    n = BATCHES_PER_EPOCH + 3
    previous = signal.signal(signal.SIGTERM, _unhandled)  # an unhandled SIGTERM must not end the test session
    try:
        stopped = run_train(data, tmp_path / "b", epochs=3, backend=SignalAfterUpdate(n, sig))
    except KeyboardInterrupt:  # a fix might re-raise after saving; must not end the test session
        stopped = None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped is not None:
        assert stopped.stop_reason == "interrupted"
    resumed = run_train(data, tmp_path / "b", epochs=3, resume=load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT))
    straight = run_train(data, tmp_path / "a", epochs=3)
    assert_same_bits(resumed.last_params, straight.last_params)


# --- divergence ------------------------------------------------------------------


class LossAt(NumpyReference):
    """Returns ``change(loss)`` as the loss of the n-th training step (the step itself runs)."""

    def __init__(self, n, change):
        super().__init__()
        self.n, self.change, self.calls = n, change, 0

    def train_step(self, state, x, y):
        self.calls += 1
        loss = super().train_step(state, x, y)
        return self.change(loss) if self.calls == self.n else loss


class NaNParamsAt(NumpyReference):
    """Its n-th step leaves NaN parameters behind but reports a finite loss."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def _train_step(self, state, x, y):
        self.calls += 1
        loss = super()._train_step(state, x, y)
        if self.calls == self.n:
            state.params["head.b"][...] = np.nan
        return loss


def test_parameters_that_become_nan_at_the_end_of_an_epoch_are_a_divergence(data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DivergenceError, match="parameters became NaN or infinite in epoch 2") as info:
        run_train(data, out, epochs=3, backend=NaNParamsAt(2 * BATCHES_PER_EPOCH))  # the last step of epoch 2
    assert "(epoch 1) is kept" in str(info.value)
    assert load_checkpoint(out / LAST_CHECKPOINT).meta["progress"]["epoch"] == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_divergence_keeps_last_good_checkpoint(data, tmp_path, value):
    out = tmp_path / "run"
    snapshots = {}

    def on_epoch(record):
        path = out / LAST_CHECKPOINT
        snapshots[record["epoch"]] = (path.read_bytes(), path.stat().st_mtime_ns)

    n = 2 * BATCHES_PER_EPOCH + 2  # second batch of the third epoch
    with pytest.raises(DivergenceError) as info:
        run_train(data, out, epochs=5, backend=LossAt(n, lambda loss: value), on_epoch=on_epoch)
    message = str(info.value)
    assert f"became {value}" in message
    assert "epoch 3, batch 2" in message
    assert "(epoch 2)" in message  # the checkpoint that is kept
    assert sorted(snapshots) == [1, 2]
    path = out / LAST_CHECKPOINT
    assert (path.read_bytes(), path.stat().st_mtime_ns) == snapshots[2]
    kept = load_checkpoint(path)
    assert (kept.meta["progress"]["epoch"], kept.meta["progress"]["batch"]) == (2, 0)
    assert int(kept.opt_state["step"]) == 2 * BATCHES_PER_EPOCH
    assert leftover_temp_files(out) == []
    # the kept checkpoint resumes
    resumed = run_train(data, out, epochs=3, resume=kept)
    assert resumed.stop_reason == "completed" and len(resumed.history) == 3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_huge_learning_rate_diverges(data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DivergenceError) as info:
        run_train(data, out, epochs=30, opt=OptimizerConfig("sgd", lr=1e4))
    message = str(info.value)
    if "No epoch had finished" in message:
        assert "at epoch 1," in message and not (out / LAST_CHECKPOINT).exists()
        return
    match = re.search(r"at epoch (\d+), batch (\d+).*last good checkpoint \(epoch (\d+)\)", message)
    assert match, message
    epoch, kept_epoch = int(match.group(1)), int(match.group(3))
    assert kept_epoch == epoch - 1
    if kept_epoch > 0:
        kept = load_checkpoint(out / LAST_CHECKPOINT)  # finite, or it would not load
        assert kept.meta["progress"]["epoch"] == kept_epoch


# --- early stopping ----------------------------------------------------------------


class ScriptedValidation(NumpyReference):
    """Adds a scripted offset to the k-th evaluation's outputs, which fixes the
    order of the validation losses whatever the model learned."""

    def __init__(self, offsets):
        super().__init__()
        self.offsets, self.calls = offsets, 0

    def forward(self, cfg, params, x):
        out = super().forward(cfg, params, x)
        offset = self.offsets[self.calls]
        self.calls += 1
        return out + offset


def test_early_stopping_keeps_best(data, tmp_path):
    out = tmp_path / "run"
    params_after = {}

    def on_epoch(record):
        params_after[record["epoch"]] = load_checkpoint(out / LAST_CHECKPOINT).params

    offsets = [1000.0, 900.0, 700.0, 800.0, 1200.0, 1300.0, 1400.0, 1500.0, 1600.0, 1700.0]
    result = run_train(data, out, epochs=10, patience=2, backend=ScriptedValidation(offsets), on_epoch=on_epoch)
    assert result.stop_reason == "early stopping"
    assert len(result.history) == 5  # best at 3, then 2 epochs without improvement
    val = [h["val_loss"] for h in result.history]
    assert int(np.argmin(val)) + 1 == 3 == result.best_epoch
    assert result.best_val_loss == val[2]
    best = load_checkpoint(out / BEST_CHECKPOINT)
    assert best.opt_state is None  # best.npz holds parameters only
    assert_same_bits(best.params, params_after[3])
    assert_same_bits(result.params, params_after[3])
    assert_same_bits(result.last_params, params_after[5])
    assert not np.array_equal(params_after[3]["head.W"], params_after[5]["head.W"])
    last = load_checkpoint(out / LAST_CHECKPOINT)
    assert last.meta["progress"]["bad_epochs"] == 2 and last.meta["progress"]["best_epoch"] == 3


def test_resume_keeps_best_from_before_the_stop(data, tmp_path):
    """The best epoch lies before the resume point: the resumed run still returns it."""
    offsets = [1000.0, 700.0, 800.0, 900.0, 950.0]
    straight = run_train(data, tmp_path / "a", epochs=5, backend=ScriptedValidation(offsets))
    run_train(data, tmp_path / "b", epochs=3, backend=ScriptedValidation(offsets[:3]))
    resumed = run_train(data, tmp_path / "b", epochs=5, backend=ScriptedValidation(offsets[3:]),
                        resume=load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT))
    assert straight.best_epoch == resumed.best_epoch == 2
    assert straight.best_val_loss == resumed.best_val_loss
    assert_same_bits(straight.params, resumed.params)
    assert not np.array_equal(resumed.params["head.W"], resumed.last_params["head.W"])
    assert_same_bits(load_checkpoint(tmp_path / "b" / BEST_CHECKPOINT).params, straight.params)


def test_no_early_stopping_without_patience(data, tmp_path):
    offsets = [1000.0, 1100.0, 1200.0, 1300.0]
    result = run_train(data, tmp_path, epochs=4, backend=ScriptedValidation(offsets))
    assert result.stop_reason == "completed" and len(result.history) == 4
    assert result.best_epoch == 1


@pytest.mark.parametrize("kwargs", [dict(epochs=0), dict(batch_size=0), dict(patience=0)])
def test_run_config_validation(kwargs):
    with pytest.raises(ConfigError):
        RunConfig(**{"epochs": 1, **kwargs})


# --- checkpoint files ------------------------------------------------------------


def test_atomic_write_success(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write(target, lambda f: f.write(b"hello"))
    assert target.read_bytes() == b"hello"
    atomic_write(target, lambda f: f.write(b"world"))
    assert target.read_bytes() == b"world"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_old_file(tmp_path, error):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old contents")

    def write(f):
        f.write(b"half of the new")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, write)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def _npz_with_header(path, header, **arrays):
    np.savez(path, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)


def _good_checkpoint(path):
    save_checkpoint(path, CFG, lb.init_params(CFG, 0), ADAM, None, {"note": "x"})
    return path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: None, id="missing"),
        pytest.param(lambda p: p.mkdir(), id="directory"),
        pytest.param(lambda p: p.write_bytes(b"this is not a checkpoint at all"), id="garbage"),
        pytest.param(lambda p: p.write_bytes(_good_checkpoint(p).read_bytes()[:100]), id="truncated-head"),
        pytest.param(lambda p: p.write_bytes(_good_checkpoint(p).read_bytes()[:-30]), id="truncated-tail"),
        pytest.param(lambda p: np.savez(p, a=np.ones(3)), id="npz-without-header"),
        pytest.param(lambda p: np.savez(p, header=np.frombuffer(b"{not json", np.uint8)), id="header-not-json"),
        pytest.param(lambda p: np.savez(p, header=np.array([1.5, 2.5])), id="header-not-bytes"),
        pytest.param(lambda p: np.savez(p, header=np.array([None, 1], dtype=object)), id="pickled-object-array"),
        pytest.param(lambda p: _npz_with_header(p, {"format": "something-else", "version": 1}), id="wrong-format"),
        pytest.param(lambda p: _npz_with_header(p, {"format": "lstmbench-checkpoint", "version": 99,
                                                    "model": CFG.to_dict()}), id="future-version"),
        pytest.param(lambda p: _npz_with_header(p, {"format": "lstmbench-checkpoint", "version": 1,
                                                    "model": {"input_size": 1}}), id="bad-model"),
        pytest.param(lambda p: _npz_with_header(p, {"format": "lstmbench-checkpoint", "version": 1,
                                                    "model": CFG.to_dict()}), id="no-params"),
        pytest.param(lambda p: _npz_with_header(
            p, {"format": "lstmbench-checkpoint", "version": 1, "model": CFG.to_dict()},
            **{f"param/{k}": v.astype(np.float32) for k, v in lb.init_params(CFG).items()}), id="params-wrong-dtype"),
    ],
)
@pytest.mark.filterwarnings("ignore::ResourceWarning")  # truncated files: see test_load_checkpoint_truncated_...
def test_load_checkpoint_errors(tmp_path, make):
    path = tmp_path / "ckpt.npz"
    make(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)
    gc.collect()  # the leaked file (if any) is closed here, under this test's filter


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()




@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_bytes(b""), id="empty-file"),
        pytest.param(lambda p: p.write_bytes(_npy_bytes(np.ones(3))), id="npy-file"),
        pytest.param(lambda p: np.savez(p, header=np.frombuffer(b"[1, 2]", np.uint8)), id="header-json-list"),
    ],
)
def test_load_checkpoint_rejects_damaged_files(tmp_path, make):
    path = tmp_path / "ckpt.npz"
    make(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def _load_expecting_error(path):
    """load_checkpoint(path) must raise CheckpointError; returns the ResourceWarnings it caused."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_load_checkpoint_garbage_closes_the_file(tmp_path):
    (tmp_path / "g.npz").write_bytes(b"this is not a checkpoint at all")
    assert _load_expecting_error(tmp_path / "g.npz") == []


def test_load_checkpoint_truncated_closes_the_file(tmp_path):
    path = _good_checkpoint(tmp_path / "t.npz")
    path.write_bytes(path.read_bytes()[:-30])
    assert _load_expecting_error(path) == []


def test_checkpoint_round_trip(tmp_path):
    cfg = ModelConfig(2, 3, 4, num_layers=2, loss="xent", dtype="float32")
    params = lb.init_params(cfg, 5)
    opt = OptimizerConfig("sgd", lr=0.5, momentum=0.5, clip_norm=3.0)
    state = lb.init_optimizer_state(opt, params)
    save_checkpoint(tmp_path / "c.npz", cfg, params, opt, state, {"hello": [1, 2], "x": 1.5})
    ckpt = load_checkpoint(tmp_path / "c.npz")
    assert ckpt.model == cfg and ckpt.optimizer == opt and ckpt.meta == {"hello": [1, 2], "x": 1.5}
    assert_same_bits(ckpt.params, params)
    assert_same_bits(ckpt.opt_state, state)
    with zipfile.ZipFile(tmp_path / "c.npz") as z:  # data, never pickles
        assert all(n.endswith(".npy") for n in z.namelist())


def test_save_and_load_params(tmp_path):
    params = lb.init_params(CFG, 9)
    path = tmp_path / "p.npz"
    lb.save_params(path, params, CFG)
    loaded, cfg = lb.load_params(path)
    assert cfg == CFG
    assert_same_bits(loaded, params)
    loaded, _ = lb.load_params(path, cfg=CFG)
    assert_same_bits(loaded, params)
    for other in (ModelConfig(1, 7, 1), ModelConfig(1, 6, 1, dtype="float32"), ModelConfig(1, 6, 1, many_to_many=True)):
        with pytest.raises(CheckpointError, match="does not match"):
            lb.load_params(path, cfg=other)
    with pytest.raises(NonFiniteError):
        lb.save_params(tmp_path / "nan.npz", {**params, "head.b": np.array([np.nan])}, CFG)
    assert not (tmp_path / "nan.npz").exists()


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one-epoch")
    run_train(data, out, epochs=1)
    return out


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(batch_size=8), "batch_size 16 \\(this run: 8\\): batch size and seed"),
        (dict(seed=4), "seed 3 \\(this run: 4\\): batch size and seed"),
        (dict(cfg=ModelConfig(1, 7, 1)), "checkpoint model"),
        (dict(cfg=ModelConfig(1, 6, 1, num_layers=2)), "checkpoint model"),
        (dict(opt=OptimizerConfig("adam", lr=0.01)), "checkpoint optimizer"),
        (dict(opt=OptimizerConfig("sgd", lr=0.02)), "checkpoint optimizer"),
    ],
)
def test_resume_mismatch(data, one_epoch, tmp_path, change, match):
    ckpt = load_checkpoint(one_epoch / LAST_CHECKPOINT)
    with pytest.raises(CheckpointError, match=match):
        run_train(data, tmp_path / "run", epochs=2, resume=ckpt, **change)
    assert not (tmp_path / "run").exists()


def test_resume_from_best_is_refused(data, one_epoch, tmp_path):
    with pytest.raises(CheckpointError, match="use last.npz"):
        run_train(data, tmp_path / "run", epochs=2, resume=load_checkpoint(one_epoch / BEST_CHECKPOINT))


def test_resume_matching_run_is_accepted(data, one_epoch, tmp_path):
    result = run_train(data, None, epochs=2, resume=load_checkpoint(one_epoch / LAST_CHECKPOINT))
    assert [h["epoch"] for h in result.history] == [1, 2]


# --- bad input to train ------------------------------------------------------------


def _with_nan(a, where=0):
    a = a.copy()
    a.flat[where] = np.nan
    return a


@pytest.mark.parametrize(
    "mangle,error",
    [
        (lambda t, v: ((_with_nan(t[0], 7), t[1]), v), NonFiniteError),
        (lambda t, v: ((t[0], _with_nan(t[1])), v), NonFiniteError),
        (lambda t, v: (t, (_with_nan(v[0]), v[1])), NonFiniteError),
        (lambda t, v: ((t[0][:, :, 0], t[1]), v), ShapeError),  # x without a feature axis
        (lambda t, v: ((t[0], t[1][:, 0]), v), ShapeError),  # y (B,) for a (B, O) model
        (lambda t, v: ((t[0], t[1][:-1]), v), ShapeError),  # fewer targets than inputs
        (lambda t, v: (t, (np.concatenate([v[0], v[0]], axis=2), v[1])), ShapeError),  # 2 features
    ],
    ids=["nan-x", "nan-y", "nan-val-x", "x-2d", "y-1d", "y-short", "val-features"],
)
def test_bad_training_data(data, tmp_path, mangle, error):
    train_data, val_data = mangle(*data)
    out = tmp_path / "run"
    calls = []
    with pytest.raises(error):
        run_train((train_data, val_data), out, epochs=2, on_epoch=calls.append)
    assert calls == []
    assert not out.exists()


# --- types that survive a whole epoch and then break the checkpoint -----------------


class Float32Loss(NumpyReference):
    """Returns the loss as np.float32, which the conformance kit accepts."""

    def train_step(self, state, x, y):
        return np.float32(super().train_step(state, x, y))


def test_backend_returning_numpy_float32_loss(data, tmp_path):
    result = run_train(data, tmp_path, epochs=2, backend=Float32Loss())
    assert result.stop_reason == "completed"


def test_numpy_integer_seed(data, tmp_path):
    result = run_train(data, tmp_path, epochs=2, seed=np.int64(3))
    assert result.stop_reason == "completed"
    assert load_checkpoint(tmp_path / LAST_CHECKPOINT).meta["run"]["seed"] == 3


def test_an_exploding_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    n = BATCHES_PER_EPOCH + 3  # third batch of the second epoch
    with pytest.raises(DivergenceError) as info:
        run_train(data, out, epochs=4, backend=LossAt(n, lambda loss: loss * 1e4))
    message = str(info.value)
    assert "exploded to" in message and "over 1000 times its best so far" in message
    assert "epoch 2, batch 3" in message and "(epoch 1)" in message and "--lr" in message
    assert load_checkpoint(out / LAST_CHECKPOINT).meta["progress"]["epoch"] == 1


def test_a_loss_spike_below_the_explosion_limit_trains_on(data, tmp_path):
    result = run_train(data, tmp_path / "run", epochs=3, backend=LossAt(BATCHES_PER_EPOCH + 3, lambda loss: loss * 100))
    assert result.stop_reason == "completed"
