"""`lstmbench check BACKEND`: the conformance kit (lstmbench.testing) from the command line.

One line per check and dtype: PASS with the worst error seen against the tolerance
(1 is the limit; "worst 0.03 of tolerance" leaves 30x room), FAIL with the first line
of what disagreed, SKIP with the reason. Exit status: 0 when nothing failed, 1 when a
check failed, 2 for a usage error (unknown or unavailable backend, unknown check) or a
backend that fails to load.

Examples per check: --quick draws QUICK_EXAMPLES, --examples N draws N, and the default
is the kit's own: the active Hypothesis profile's max_examples (Hypothesis's default is
100; bad_inputs and declared_unsupported draw at most 5). Every run uses a seed, random
unless --seed gives one, and prints it: the same seed draws the same examples again.

Hypothesis is imported only when the command runs, not when the CLI starts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict

from lstmbench.cli.common import natural, positive
from lstmbench.errors import LstmbenchError
from lstmbench.training.progress import progress_bar

QUICK_EXAMPLES = 3  # a smoke test: seconds for a NumPy-speed backend, and a wrong gradient still fails
DTYPES = ("float64", "float32")
STATUS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}


def register(sub) -> None:
    """Add the `check` subcommand to the CLI's subparsers (imports Hypothesis only when run)."""
    p = sub.add_parser(
        "check", help="run the conformance kit on a backend: does it compute what the reference computes?",
        description="Run the conformance kit on registered backends (a plugin's included) and report per check "
                    "and dtype. Exit status 0: every check passed or was skipped; 1: a check failed; "
                    "2: a usage error or a backend that fails to load.")
    p.add_argument("backends", nargs="+", metavar="BACKEND", help="backend name(s), see `lstmbench backends`")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--quick", action="store_true",
                       help=f"{QUICK_EXAMPLES} examples per check: a smoke test in seconds")
    count.add_argument("--examples", type=positive, metavar="N",
                       help="examples per check (default: the Hypothesis profile's max_examples, 100 unless a "
                            "profile is loaded)")
    p.add_argument("--checks", nargs="+", metavar="NAME", help="run only these checks (default: all of them)")
    p.add_argument("--dtype", choices=DTYPES, help="one dtype (default: both)")
    p.add_argument("--seed", type=natural, help="seed of the examples, to repeat a run (default: a random one, "
                                                 "printed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise LstmbenchError("`lstmbench check` needs Hypothesis, an lstmbench dependency missing here: "
                             "pip install 'hypothesis>=6.100' (or reinstall lstmbench: pip install -e '.[dev]')"
                             ) from None
    from hypothesis import settings

    import lstmbench as lb
    from lstmbench.testing import CHECKS
    from lstmbench.testing.runner import check_one

    unknown = [c for c in args.checks or () if c not in CHECKS]
    if unknown:
        raise LstmbenchError(f"unknown check(s) {', '.join(unknown)}; checks: {', '.join(CHECKS)}")
    checks = args.checks or list(CHECKS)
    dtypes = (args.dtype,) if args.dtype else DTYPES
    # every name first: an unknown or unavailable one is an error before anything runs
    backends = [lb.get_backend(name) for name in dict.fromkeys(args.backends)]
    examples = QUICK_EXAMPLES if args.quick else args.examples or settings().max_examples
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    # which check is running, on a terminal only: a slow check would otherwise look like a hang
    bar = progress_bar(not args.json, total=len(backends) * len(checks) * len(dtypes), leave=False,
                       bar_format="{n}/{total} {desc}")

    how = " (--quick)" if args.quick else "" if args.examples else " (the Hypothesis profile's max_examples)"
    results = []
    started = time.perf_counter()
    for backend in backends:
        if not args.json:
            bar.write(f"lstmbench check {backend.name}: {len(checks)} check(s) x {', '.join(dtypes)}, {examples} "
                      f"examples per check{how}, seed {seed}", file=sys.stdout)
        own = []
        for check in checks:
            for dtype in dtypes:
                bar.set_description_str(f"running {check} {dtype} on {backend.name} ...")
                result = check_one(backend, check, dtype, max_examples=examples, seed=seed)
                bar.update()
                own.append(result)
                if not args.json:
                    bar.write(format_result(result), file=sys.stdout)
        results += own
        if not args.json:
            bar.write(f"{backend.name}: {summary(own)}", file=sys.stdout)
    bar.close()
    failed = any(r.status == "failed" for r in results)
    if args.json:
        print(json.dumps({"seed": seed, "examples": examples, "results": [asdict(r) for r in results],
                          "summary": counts(results), "seconds": time.perf_counter() - started}, indent=2))
    elif len(backends) > 1:
        print(f"all: {summary(results)}")
    if failed and not args.json:
        print(f"repeat these examples with --seed {seed}", file=sys.stderr)
    return 1 if failed else 0


def format_result(r) -> str:
    """``PASS  forward  float64  worst 0.0021 of tolerance (forward output)``; a failure
    adds the first line of its message below; a skip gives its reason."""
    head = f"{STATUS[r.status]}  {r.check:<20}  {r.dtype:<7}  "
    if r.status == "skipped":
        return head + r.detail
    # checks without a tolerance comparison (bad_inputs, declared_unsupported, deterministic) show "-"
    worst = "-" if r.worst is None else f"worst {r.worst.ratio:.2g} of tolerance ({r.worst.what})"
    if r.status == "failed":
        return f"{head}{worst}\n      {r.detail.splitlines()[0] if r.detail else ''}"
    return head + worst


def counts(results) -> dict[str, int]:
    return {status: sum(r.status == status for r in results) for status in STATUS}


def summary(results) -> str:
    c = counts(results)
    seconds = sum(r.seconds for r in results)
    return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped in {seconds:.1f} s"

