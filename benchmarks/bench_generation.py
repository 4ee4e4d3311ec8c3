"""Text generation at one row (B=1) with the state carried (Backend.generate), per backend, on
a 2 x 256 character model; and its rate over torch's stepwise loop and over the backend's own
window re-run, each timed in the same process (lstmbench.bench.generation)."""

import numpy as np

from lstmbench.bench import generation
from lstmbench.bench import timing  # a module: asv would take a function named time_* here for a benchmark
from lstmbench.params import init_params

from .common import BACKENDS, DTYPE, backend_or_skip

SYMBOLS = 200
WINDOW = 64


class Generation:
    params = [BACKENDS]
    param_names = ["backend"]
    number = 1
    repeat = (3, 10, 20.0)
    timeout = 600

    def setup(self, backend):
        self.cfg = generation.char_model(DTYPE)
        self.backend = backend_or_skip(backend, self.cfg)
        if not self.backend.capabilities.sequences:
            raise NotImplementedError(f"{backend} does not carry a state")
        problem = generation.verified_generation(self.backend, lambda b, *args: b.generate(*args))
        if problem:
            raise AssertionError(f"{backend} does not draw the reference's symbols: {problem}")
        self.params = init_params(self.cfg, seed=0)
        rng = np.random.default_rng(0)
        self.prime, self.uniforms = rng.integers(0, generation.VOCAB, generation.PRIME), rng.random(SYMBOLS)

    def _rate(self) -> float:
        """Symbols per second of generate, timed here (for the ratios)."""
        t = timing.time_calls(lambda: self.backend.generate(self.cfg, self.params, self.prime, self.uniforms), 5)
        return SYMBOLS / t.median_s

    def time_generate(self, backend):
        self.backend.generate(self.cfg, self.params, self.prime, self.uniforms)

    def track_over_torch_stepwise(self, backend):
        row = generation.torch_row(self.cfg, self.params, self.prime, SYMBOLS, 5)
        if row is None or row.symbols_per_s is None:
            raise NotImplementedError("torch is not installed, or disagrees with the reference")
        return self._rate() / row.symbols_per_s

    track_over_torch_stepwise.unit = "x"

    def track_over_window_rerun(self, backend):
        few = self.uniforms[:20]
        t = timing.time_calls(lambda: generation.window_generate(self.backend, self.cfg, self.params, self.prime, few,
                                                                 WINDOW), 3)
        return self._rate() / (len(few) / t.median_s)

    track_over_window_rerun.unit = "x"
