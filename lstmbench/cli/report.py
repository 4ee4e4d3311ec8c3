"""`lstmbench report`: the offline HTML page of the asv results (lstmbench.bench.report)."""

from __future__ import annotations

import argparse

from lstmbench.bench.report import find_results_dir, write_report


def register(sub) -> None:
    """Add the `report` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "report", help="an offline HTML page with charts of the asv results",
        description="Write a static HTML page (PNG charts, no scripts, nothing from a network) of the asv "
                    "history: training step time, speedup over the reference and the dataset-scaling exponent "
                    "per backend over commits, the latest grid, and every other benchmark asv recorded.")
    p.add_argument("--config", metavar="PATH",
                   help="asv's configuration, whose results_dir is read (relative to the file's folder); "
                        "default: asv.conf.json in the current directory")
    p.add_argument("--results", metavar="DIR", help="asv's results folder, instead of the configuration's results_dir")
    p.add_argument("--out", metavar="DIR", default=".asv/report",
                   help="folder to write index.html and its charts to (default: .asv/report)")
    p.add_argument("--machine", metavar="NAME", help="only this asv machine (default: every machine in the results)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    results_dir = find_results_dir(args.config, args.results)
    page = write_report(results_dir, args.out, machine=args.machine)
    print(page)
    return 0
