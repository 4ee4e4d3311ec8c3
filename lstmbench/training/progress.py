"""Progress output that stays readable wherever stderr goes."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

LOG_INTERVAL_S = 10.0  # when stderr is no terminal: a line of progress at most this often
# what a line says when the caller gave no bar_format: tqdm's own figures, as on a terminal without the bar
LOG_METER = "{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def progress_bar(enabled: bool = True, **kwargs) -> tqdm | ProgressLog:
    """A tqdm bar on stderr when it is a terminal. When stderr is a file or a pipe (a CI
    log, `2>log`), a bar's carriage-return redraws would run into the lines printed beside
    it, so a ProgressLog writes a plain line of the progress every LOG_INTERVAL_S instead.
    ``kwargs`` are tqdm's (total, desc, unit, initial, bar_format, leave). Either can be
    used in a ``with`` statement, which closes it."""
    if not enabled:
        return tqdm(disable=True, **kwargs)
    if _is_terminal(sys.stderr):
        return tqdm(**kwargs)
    return ProgressLog(**kwargs)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


class ProgressLog:
    """The methods of a tqdm bar that lstmbench calls, for a log: one plain line of what is
    done (tqdm's figures, formatted by tqdm) at most every LOG_INTERVAL_S, the first once
    that much time has passed (a short run prints none), and a last one at close if any was
    printed and more was done since. Every line is flushed as it is written."""

    def __init__(self, total: float | None = None, desc: str | None = None, unit: str = "it", initial: float = 0,
                 bar_format: str | None = None, **tqdm_options):  # the others (leave) change nothing in a log
        self.total, self.desc, self.unit, self.bar_format = total, desc or "", unit, bar_format
        self.n = self.initial = initial
        self.postfix = ""
        self.file = sys.stderr
        self.started = self.last_line_at = time.monotonic()
        self.n_in_last_line: float | None = None  # None: no line printed yet
        self.closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        self._print_if_due()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)
        self._print_if_due()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs) -> None:
        fields = {**(ordered_dict or {}), **kwargs}
        self.set_postfix_str(", ".join(f"{key}={str(value).strip()}" for key, value in fields.items()))

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""
        self._print_if_due()

    def write(self, s: str, file=None, end: str = "\n", nolock: bool = False) -> None:
        """A line of the caller's; on stdout unless ``file`` says otherwise, as tqdm.write."""
        print(s, file=sys.stdout if file is None else file, end=end, flush=True)

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed and self.n_in_last_line is not None and self.n != self.n_in_last_line:
            self._print_line()
        self.closed = True

    def line(self) -> str:
        """The progress as one line: tqdm's format_meter, with the caller's bar_format if any."""
        fmt = self.bar_format or ("{desc}: " if self.desc else "") + LOG_METER
        return tqdm.format_meter(self.n, self.total, time.monotonic() - self.started, prefix=self.desc,
                                 unit=self.unit, postfix=self.postfix, bar_format=fmt, initial=self.initial)

    def _print_if_due(self) -> None:
        if not self.closed and time.monotonic() - self.last_line_at >= LOG_INTERVAL_S:
            self._print_line()

    def _print_line(self) -> None:
        print(self.line(), file=self.file, flush=True)
        self.last_line_at, self.n_in_last_line = time.monotonic(), self.n
