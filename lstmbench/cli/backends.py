"""`lstmbench backends`: every registered backend, whether it runs here, and why not."""

from __future__ import annotations

import json

import lstmbench as lb


def register(sub) -> None:
    p = sub.add_parser("backends", help="list backends, whether they run here, and why not")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    infos = lb.list_backends()
    if args.json:
        print(json.dumps([vars(i) for i in infos], indent=2))
        return 0
    rows = [("name", "available", "dtypes", "notes")]
    for i in infos:
        rows.append((i.name, "yes" if i.available else "no", ",".join(i.dtypes), i.description if i.available else i.reason))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
    return 0
