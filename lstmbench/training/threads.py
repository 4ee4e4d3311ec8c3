"""A thread count that follows the machine: each step runs on the count whose recent steps were
fastest, and the others are tried again now and then.

Why this is safe: every backend gives the same bits whatever its thread count (the kit's
``thread_independent`` check, docs/determinism.md), so changing the count between two steps
changes only the time the step takes.

Why it is needed: the parallel backends meet once per time step (a barrier, or a parallel
region). On a busy machine the operating system deschedules one of their threads now and then,
and every other thread waits for it at the next meeting, so two threads on two cores beside
another job can be several times slower than one thread (docs/determinism.md has figures).

How it decides (``ThreadTuner``): it keeps the last ``samples`` step times, per row of the
batch, of each candidate count (1, the powers of two below the most, and the most). A count
without enough samples is tried first (the first step after a change is not counted: it wakes
the threads; one sample is enough for a count already CLEARLY_SLOWER than the best); after that
the count with the lowest median runs (the running one stays unless another is MARGIN times
faster, so noise does not make it flip; only full batches are compared). Because the running
count keeps being measured, it is left as soon as its median grows past another count's. Because the other counts' figures grow
stale, they are forgotten and measured again after ``recheck_every`` steps, which finds a
machine that has become quiet again; a recheck that changes nothing doubles the wait before the
next (up to MAX_BACKOFF times), so a steady machine pays for few slow steps.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from contextlib import contextmanager
from typing import Callable, Iterator

from lstmbench.protocol import Backend

__all__ = ["AUTO", "ThreadTuner", "candidate_counts"]

AUTO = "auto"  # --threads auto: each step on the count that is fastest now

#: a count whose first figure is this much slower than the best's median needs no more samples
CLEARLY_SLOWER = 1.5
#: the wait between rechecks grows to at most this many times ``recheck_every``
MAX_BACKOFF = 16
#: the running count gives way only to one this much faster (noise does not make it flip)
MARGIN = 1.1


def candidate_counts(most: int) -> list[int]:
    """1, the powers of two below ``most``, and ``most``."""
    counts, n = {max(1, most)}, 1
    while n < most:
        counts.add(n)
        n *= 2
    return sorted(counts)


class ThreadTuner:
    """Chooses each step's thread count from the step times it measures (module docstring).

    ``clock``: seconds, monotonic (a test passes a fake one)."""

    def __init__(self, most: int, *, samples: int = 3, recheck_every: int = 32,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if most < 1 or samples < 1 or recheck_every < 1:
            raise ValueError(f"most, samples and recheck_every must be >= 1, got {most}, {samples}, {recheck_every}")
        self.candidates = candidate_counts(most)
        self.samples, self.recheck_every, self.clock = samples, recheck_every, clock
        self.times = {n: deque(maxlen=samples) for n in self.candidates}  # seconds per row
        self.steps_at = Counter()  # steps run on each count
        self.last: int | None = None  # the count of the step before
        self.steps = 0
        self.wait = recheck_every  # steps between rechecks
        self.next_recheck = recheck_every
        self.best_before_recheck: int | None = None
        self.full_rows = 0  # the largest batch seen: only full batches are compared

    def choose(self) -> int:
        """The thread count for the next step."""
        if self.steps >= self.next_recheck:
            self._recheck()
        unmeasured = [n for n in reversed(self.candidates) if not self._measured(n)]
        if unmeasured:
            return unmeasured[0]
        best = self.best()
        if self.best_before_recheck is not None:  # a recheck has just ended
            same = best == self.best_before_recheck
            self.wait = min(self.wait * 2, self.recheck_every * MAX_BACKOFF) if same else self.recheck_every
            self.next_recheck, self.best_before_recheck = self.steps + self.wait, None
        return best

    def _recheck(self) -> None:
        """Forget the other counts' stale figures, so they are measured again."""
        self.best_before_recheck = best = self.best()
        for n in self.candidates:
            if n != best:
                self.times[n].clear()
        self.next_recheck = float("inf")  # until this recheck ends (choose)

    def _measured(self, n: int) -> bool:
        times = self.times[n]
        if len(times) >= self.samples:
            return True
        others = [statistics.median(t) for m, t in self.times.items() if m != n and len(t) >= self.samples]
        return bool(times) and bool(others) and times[-1] > CLEARLY_SLOWER * min(others)

    def best(self) -> int:
        """The measured count with the lowest median time per row (the most, before any figures);
        the running count stays unless another is MARGIN times faster."""
        measured = {n: statistics.median(t) for n, t in self.times.items() if t}
        if not measured:
            return self.candidates[-1]
        fastest = min(measured, key=lambda n: (measured[n], -n))
        if self.last in measured and measured[self.last] <= MARGIN * measured[fastest]:
            return self.last
        return fastest

    def record(self, threads: int, seconds: float, rows: int) -> None:
        """A step of ``rows`` rows took ``seconds`` on ``threads`` threads."""
        self.full_rows = max(self.full_rows, rows)
        # not counted: the first step after a change (it wakes the threads), and a short batch
        # (the last of an epoch: its fixed costs would weigh on fewer rows)
        if threads == self.last and rows == self.full_rows:
            self.times[threads].append(seconds / rows)
        self.last = threads
        self.steps += 1
        self.steps_at[threads] += 1

    @contextmanager
    def step(self, backend: Backend, rows: int) -> Iterator[int]:
        """``with tuner.step(backend, rows) as threads:`` run one step on the chosen count."""
        threads = self.choose()
        with backend.using_threads(threads):
            started = self.clock()
            yield threads
            self.record(threads, self.clock() - started, rows)

    def best_count(self, backend: Backend):
        """``with tuner.best_count(backend):`` other work (validation) on the best count so far."""
        return backend.using_threads(self.best())

    def summary(self) -> dict:
        """What was used, for metrics.json and runtime reports."""
        return {"mode": "auto", "candidates": self.candidates, "last": self.last,
                "steps_at": {str(n): c for n, c in sorted(self.steps_at.items())}}
