"""The `lstmbench` command. Each subcommand is a module of this package that adds its parser
with ``register(sub)``; ``main`` runs it and turns every failure a user can cause into one
`error:` line with exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import lstmbench as lb
from lstmbench.cli import backends, bench, check, compare, demo, export, predict, report, train
from lstmbench.cli.common import say
from lstmbench.errors import LstmbenchError
from lstmbench.training import distributed

COMMANDS = (backends, train, predict, export, bench, demo, check, report, compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lstmbench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lstmbench {lb.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:  # each module adds its parser, with func= the function that runs it
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # each line as it is printed, also into a pipe or a file
        sys.stdout.reconfigure(line_buffering=True)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BaseException as exc:
        w = distributed.current()
        if w.distributed and not distributed.raised_on_every_rank(exc) and not isinstance(exc, SystemExit):
            # this rank alone failed: the others would wait for it in a collective forever
            detail = str(exc) if isinstance(exc, LstmbenchError) else traceback.format_exc()
            print(f"rank {w.rank} of {w.size}: error: {detail}\nending all {w.size} ranks", file=sys.stderr,
                  flush=True)
            w.abort(130 if isinstance(exc, KeyboardInterrupt) else 2)
        if isinstance(exc, distributed.DistributedError) and distributed.launched()[1] != 0:
            return 2  # rank 0 says it (also when MPI could not be set up: the launcher's rank)
        if isinstance(exc, LstmbenchError):
            say(f"error: {exc}")
            return 2
        if isinstance(exc, KeyboardInterrupt):  # outside the training loop, which saves its own state
            say("interrupted")
            return 130
        if isinstance(exc, BrokenPipeError):  # `lstmbench backends | head -1`: the reader left early
            _discard_stdout()
            say("error: the output was closed before lstmbench finished writing it (a pipe into head, say)")
            return 2
        if isinstance(exc, MemoryError):  # the size checks missed one: still a sentence, not a traceback
            say(f"error: out of memory{f' ({exc})' if str(exc) else ''}; try smaller sizes (--hidden, --layers, "
                "--batch-size, a shorter file)")
            return 2
        raise


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush at exit does not raise
    BrokenPipeError again (the recipe of Python's signal module docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests capture stdout)
        pass


