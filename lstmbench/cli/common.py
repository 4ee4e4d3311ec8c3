"""What the subcommands share: messages, the backend and thread count a command runs with,
and argument types whose errors name the flag."""

from __future__ import annotations

import argparse
import sys

import lstmbench as lb
from lstmbench.training import distributed
from lstmbench.training.threads import AUTO, ThreadTuner


def say(message: str) -> None:
    """A line on stderr, from rank 0 only when several ranks run."""
    if distributed.current().is_root:
        print(message, file=sys.stderr, flush=True)


def usable_threads(threads: int | None, flag: str = "--threads") -> int | None:
    """``threads`` clamped to the cores this process may use, with a warning when it was more
    (more threads than cores take turns on them, which is slower, and a count in the
    thousands makes the threading runtimes fail)."""
    usable = lb.default_threads()
    if threads and threads > usable:
        say(f"warning: {flag} {threads} is more than the {usable} core(s) this process may use; using {usable}")
        return usable
    return threads


def choose_backend(name: str | None, threads: int | str | None) -> lb.Backend:
    """The backend named, or the fastest one here, set to ``threads`` (None or "auto": all cores;
    with "auto", thread_tuner then picks each step's count below that)."""
    backend = lb.get_backend(name or lb.fastest_available())
    backend.set_threads(None if threads == AUTO else usable_threads(threads))
    return backend


def thread_tuner(backend: lb.Backend, threads: int | str | None) -> ThreadTuner | None:
    """For --threads auto: a tuner that picks each step's count up to the backend's; None for a
    fixed count, or when there is only one core to use."""
    return ThreadTuner(backend.threads) if threads == AUTO and backend.threads > 1 else None


def threads_text(backend: lb.Backend, tuner: ThreadTuner | None) -> str:
    """"2 thread(s)", or "up to 2 threads (auto)"."""
    return f"up to {backend.threads} threads (auto)" if tuner else f"{backend.threads} thread(s)"


def chosen(name: str | None) -> str:
    """How a run's backend was chosen, for the first lines of output."""
    return "" if name else " (the fastest available here; choose one with --backend)"


def add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument("--backend", help="backend name (see `lstmbench backends`; default: the fastest available, "
                                     f"first of {', '.join(lb.registry.FASTEST_FIRST)})")
    g.add_argument("--threads", type=thread_count, default=AUTO,
                   help="threads the backend uses: a number (more than the cores is clamped), or auto "
                        "(default): each step on the count that is fastest now, measured as the run goes, "
                        "so a busy machine does not slow it down. The result is the same bits either way")


def index_column(value: str | None) -> tuple[str | None, bool]:
    """(index column, whether to detect one) from --index-column: a name, "none", or not given."""
    if value is not None and value.lower() == "none":
        return None, False
    return value, True


def thread_count(text: str) -> int | str:
    """--threads: "auto" or an integer >= 1."""
    if text.strip().lower() == AUTO:
        return AUTO
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a count of at least 1, got {text!r}")
    return int(text)


def positive(text: str) -> int:
    """An integer >= 1 (argparse reports an ArgumentTypeError as a one-line usage error
    naming the flag: "argument --hidden: must be at least 1, got 0")."""
    return _number(text, int, lambda v: v >= 1, "must be at least 1")


def natural(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "must be 0 or more")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, float, lambda v: 0 < v < float("inf"), "must be a positive finite number")


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, float, lambda v: 0 <= v < float("inf"), "must be a finite number >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    return _number(text, float, lambda v: 0 <= v < 1, "must be at least 0 and below 1")


def at_most(limit: int, kind=positive):
    """``kind`` with an upper bound, for sizes that have one (forecast steps, sampled symbols)."""
    def parse(text: str) -> int:
        value = kind(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit}, got {text}")
        return value
    return parse


def _number(text: str, kind, ok, rule: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{rule}, got {text}")
    return value
