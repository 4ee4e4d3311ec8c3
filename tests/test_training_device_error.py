"""The training loop on a DeviceError (a GPU failure: out of memory, a failed launch):
lstmbench/training/loop.py names where the run stopped and keeps the last good checkpoint.

Nothing here needs a GPU or a GPU backend: the error is planted in the NumPy
reference's step (tests/test_cuda_backend.py checks that the cuda backend turns a
CUDA error into a DeviceError)."""

import pytest

import lstmbench as lb
from lstmbench.bench import workloads
from lstmbench.training.checkpoint import load_checkpoint
from lstmbench.errors import DeviceError
from lstmbench.training.loop import LAST_CHECKPOINT, RunConfig, train
from lstmbench_backends.reference import NumpyReference


def test_training_keeps_the_last_good_checkpoint_on_a_device_error(tmp_path, monkeypatch):
    backend = NumpyReference()
    cfg = lb.ModelConfig(1, 3, 1, 1, "mse", False, "float64")
    x, y = workloads.bench_batch(cfg, 12, 4)
    params, opt = lb.init_params(cfg, 0), lb.OptimizerConfig("adam", lr=1e-2, clip_norm=0.05)
    out = tmp_path / "run"
    run = RunConfig(epochs=3, batch_size=6, out_dir=out, progress=False)  # 2 steps per epoch
    steps = {"n": 0}
    train_step = backend._train_step
    snapshot = {}

    def fail_in_epoch_two(state, x, y):
        steps["n"] += 1
        if steps["n"] == 4:  # the second step of epoch 2
            snapshot["last"] = (out / LAST_CHECKPOINT).read_bytes()
            raise DeviceError("CUDA error in train_step (planted)")
        return train_step(state, x, y)

    monkeypatch.setattr(backend, "_train_step", fail_in_epoch_two)
    with pytest.raises(DeviceError, match=r"epoch 2, batch 2 .*last good checkpoint \(epoch 1\)"):
        train(backend, cfg, opt, params, (x, y), (x, y), run)
    assert (out / LAST_CHECKPOINT).read_bytes() == snapshot["last"]
    assert load_checkpoint(out / LAST_CHECKPOINT).meta["progress"]["epoch"] == 1
