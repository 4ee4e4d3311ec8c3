"""Seeded synthetic data: known structure, any length, no files."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lstmbench.data.series import Series
from lstmbench.errors import DataError


def noisy_sine_mixture(
    n: int,
    periods: Sequence[float] = (20.0, 53.0),
    amplitudes: Sequence[float] = (1.0, 0.5),
    noise: float = 0.1,
    seed: int = 0,
) -> Series:
    """Sum of sines with the given periods (in steps) plus Gaussian noise; one column."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"n must be an integer >= 1; got {n!r}")
    if len(periods) != len(amplitudes) or not periods:
        raise DataError(f"need as many periods as amplitudes (at least one); "
                        f"got {len(periods)} and {len(amplitudes)}")
    if any(p <= 0 for p in periods):
        raise DataError(f"periods must be positive; got {tuple(periods)}")
    if noise < 0:
        raise DataError(f"noise must be >= 0; got {noise}")
    t = np.arange(n, dtype=np.float64)
    clean = sum(a * np.sin(2 * np.pi * t / p) for p, a in zip(periods, amplitudes))
    values = clean + noise * np.random.default_rng(seed).standard_normal(n)
    source = (f"synthetic: sines with periods {tuple(periods)}, amplitudes {tuple(amplitudes)}, "
              f"noise std {noise}, seed {seed}")
    return Series(values.reshape(-1, 1), ("value",), name="noisy_sine_mixture", source=source)


def anbn(num_samples: int, max_n: int = 8, seed: int = 0) -> str:
    """Strings a^n b^n (1 <= n <= max_n), each ended by ".", concatenated.

    A classic test of counting: predicting where the b's stop needs memory
    of how many a's came.  Feed the result to ``make_text_dataset``.
    """
    for label, value in (("num_samples", num_samples), ("max_n", max_n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"{label} must be an integer >= 1; got {value!r}")
    counts = np.random.default_rng(seed).integers(1, max_n + 1, size=num_samples)
    return "".join("a" * k + "b" * k + "." for k in counts)
