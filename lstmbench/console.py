"""Progress output that stays readable wherever stderr goes."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr when it is a terminal. When stderr is a file or a pipe (a CI
    log, `2>log`), bars would be written as carriage-return redraws that run into the
    lines printed beside them, so there is no bar (``disable=None`` is tqdm's "not a TTY");
    the line-by-line messages (``tqdm.write``) still appear."""
    return tqdm(disable=None if enabled else True, **kwargs)
