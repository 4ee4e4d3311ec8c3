"""`lstmbench compare`: asv's comparison of two revisions on the tracked, same-process ratios
(lstmbench.bench.regressions), at the factor measured as this kind of machine's noise."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from lstmbench.bench.regressions import NOISE_FACTOR, TRACKED, continuous_command
from lstmbench.errors import LstmbenchError


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare two revisions' tracked benchmarks with asv (exit 1 on a regression)",
        description="Build both revisions with asv, run the tracked benchmarks (each backend's step over the "
                    "reference and over the FMA probe, timed in one process) with their rounds interleaved, and "
                    "report what changed by more than --factor. Exits 1 when something got slower, 0 otherwise. "
                    "Run it in the repository (where asv.conf.json is).")
    p.add_argument("base", nargs="?", default="HEAD^", help="the revision compared against (default: HEAD^)")
    p.add_argument("head", nargs="?", default="HEAD", help="the revision tested (default: HEAD)")
    p.add_argument("--against-main", action="store_true", help="compare HEAD (or HEAD given) with main")
    p.add_argument("--factor", type=float, default=NOISE_FACTOR,
                   help=f"a change counts past this factor (default {NOISE_FACTOR:g}: the noise measured in "
                        "docs/benchmarks.md, with room)")
    p.add_argument("--bench", default=TRACKED, help=f"asv's benchmark regex (default {TRACKED!r})")
    p.add_argument("--machine", help="asv machine name (default: this host's entry in ~/.asv-machine.json)")
    p.add_argument("--config", help="asv configuration file (default: asv.conf.json here)")
    p.add_argument("--dry-run", action="store_true", help="print the asv command instead of running it")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    if args.factor <= 1:
        raise LstmbenchError(f"--factor must be above 1 (a ratio of two times), got {args.factor:g}")
    base = "main" if args.against_main else args.base
    argv = continuous_command(base, args.head, args.factor, args.bench, args.machine, args.config)
    if args.dry_run:
        print(shlex.join(argv))
        return 0
    if not Path(args.config or "asv.conf.json").is_file():
        raise LstmbenchError(f"no {args.config or 'asv.conf.json'} here: run lstmbench compare in the repository")
    if shutil.which("asv") is None:
        raise LstmbenchError("asv is not installed (pip install -e '.[dev]')")
    print(f"$ {shlex.join(argv)}", file=sys.stderr)
    code = subprocess.call(argv)
    verdict = {0: "no tracked figure got worse by more than the factor",
               1: "a tracked figure got worse (asv's table above)"}
    print(f"lstmbench compare {base} {args.head}: {verdict.get(code, f'asv failed (exit {code})')}", file=sys.stderr)
    return code if code in (0, 1) else 2
