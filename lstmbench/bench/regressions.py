"""Finding regressions on a noisy machine (docs/benchmarks.md, "Regressions").

* :data:`TRACKED` and :data:`NOISE_FACTOR`: the asv benchmarks a history or a comparison
  runs, and the factor past which a change of one of them counts; the factor comes from
  runs of one commit measured on this machine (docs/benchmarks.md says which and how).
* :func:`continuous_command`: asv's own comparison of two revisions (``asv continuous``:
  both built, their rounds interleaved), on the tracked benchmarks, at that factor.
* :func:`detected_steps`: asv's step detection over a benchmark's history, for the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: asv benchmarks a comparison runs (asv's --bench regex): each backend's step over the
#: reference's, timed round by round in one process (benchmarks/bench_tracked.py). Of the
#: tracked figures it moved least between runs of one commit here (docs/benchmarks.md,
#: "How much the figures move"); the step over the FMA probe moved as much as the raw time.
TRACKED = r"bench_tracked\.OverReference\.track_over_reference"
#: a history that fits about 5 minutes a commit on 2 cores: the tracked figures (ratios and the
#: raw times beside them) and the dataset-scaling exponent (docs/benchmarks.md, "History")
HISTORY = r"bench_tracked\.|ScalingExponent"
#: a compared figure that moves by more than this factor between two revisions is a change. Over
#: 5 runs of one commit the step over the reference moved by at most 1.074 (largest / smallest);
#: 1.25 is three times that in log terms (room for a busier machine), and half a step twice
#: as slow (2.0).
NOISE_FACTOR = 1.25


def continuous_command(base: str, head: str, factor: float = NOISE_FACTOR, bench: str = TRACKED,
                       machine: str | None = None, config: str | None = None) -> list[str]:
    """The ``asv continuous`` line comparing ``head`` with ``base``: both built into asv's
    environment, their rounds interleaved, only the tracked benchmarks, a change counted past
    ``factor``; asv exits with 1 when one got worse."""
    argv = ["asv", "continuous", "--factor", f"{factor:g}", "--interleave-rounds", "--split", "--bench", bench]
    argv += ["--machine", machine] if machine else []
    argv += ["--config", config] if config else []
    return argv + [base, head]


@dataclass(frozen=True)
class Step:
    """A change of level that asv's step detection found in a series over commits."""

    start: int  # index of the first commit at the new level
    before: float  # the level before it
    after: float  # the level from it on

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before else math.inf


def detected_steps(values: list[float], threshold: float = 0.0) -> list[Step]:
    """The steps of ``values`` (one per commit, NaN where none) by asv's step detection
    (asv.step_detect.detect_steps: a piecewise-constant fit with an automatic penalty), those
    whose relative size is past ``threshold``; [] with fewer than 3 numbers."""
    from asv.step_detect import detect_steps

    if sum(not math.isnan(v) for v in values) < 3:
        return []
    fit = detect_steps([None if math.isnan(v) else v for v in values])
    found = []
    for (_, _, before, _, _), (start, _, after, _, _) in zip(fit, fit[1:]):
        if before and abs(after / before - 1) > threshold:
            found.append(Step(start, before, after))
    return found
