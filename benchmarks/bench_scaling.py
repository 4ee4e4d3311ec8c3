"""Epoch time against dataset size: N in {1000, 2000, 4000, 8000} sequences, with a
fixed minibatch and with full-batch steps, and the fitted exponent a of time ~ N^a."""

from lstmbench.bench.scaling import epoch_seconds, scaling_exponent

from .common import BACKENDS, backend_or_skip, dataset, train_state

SIZES = [1000, 2000, 4000, 8000]
MODES = ["fixed batch", "full batch"]
FIXED_BATCH = 32


def _batch(mode: str, n: int) -> int:
    return FIXED_BATCH if mode == "fixed batch" else n


class Epoch:
    params = [BACKENDS, SIZES, MODES]
    param_names = ["backend", "sequences", "mode"]
    number = 1
    repeat = (1, 3, 30.0)
    timeout = 600

    def setup(self, backend, n, mode):
        self.cfg, self.x, self.y = dataset(n)
        self.backend = backend_or_skip(backend, self.cfg)
        b = _batch(mode, n)
        self.state = train_state(self.backend, self.cfg, self.x[:b], self.y[:b])  # warm at this batch shape

    def time_epoch(self, backend, n, mode):
        b = _batch(mode, n)
        for i in range(0, n, b):
            self.backend.train_step(self.state, self.x[i : i + b], self.y[i : i + b])


class ScalingExponent:
    params = [BACKENDS, MODES]
    param_names = ["backend", "mode"]
    timeout = 900

    def setup(self, backend, mode):
        self.cfg, _, _ = dataset(SIZES[0])
        self.backend = backend_or_skip(backend, self.cfg)

    def track_exponent(self, backend, mode):
        times = []
        for n in SIZES:
            cfg, x, y = dataset(n)
            times.append(min(epoch_seconds(self.backend, cfg, x, y, _batch(mode, n)) for _ in range(2)))
        return scaling_exponent(SIZES, times)

    track_exponent.unit = "exponent"
