"""Step time of `c` and `numba` with batch shards of 16, 32 and 64 rows (2 threads), rounds
interleaved: the measurement behind SHARD_ROWS = 64 (docs/determinism.md, "Why 64 rows").

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/shard_rows.py
"""

from __future__ import annotations

import statistics

import lstmbench as lb
import lstmbench_backends.numba_cpu as numba_cpu
from lstmbench.bench.run import time_backend
from lstmbench.bench.workloads import Workload, suite_workloads

ROWS, ROUNDS, REPEATS = (16, 32, 64), 3, 9


def main() -> None:
    works = [Workload("H=32 B=128", 32, 128, 64), Workload("H=128 B=128", 128, 128, 64)]
    works += suite_workloads(["forecast-short", "odd-sizes"])
    times: dict[tuple, list[float]] = {}
    for _ in range(ROUNDS):
        for work in works:
            case = work.case("float32")
            for name in ("c", "numba"):
                backend = lb.get_backend(name)
                for rows in ROWS:
                    if name == "c":
                        backend.shard_rows = rows  # lstm_dims.shard_rows: a measurement setting
                    else:
                        numba_cpu.SHARD_ROWS = rows  # work_plan reads it at each call
                    with backend.using_threads(2):
                        seconds = time_backend(backend, case.cfg, case.x, case.y, REPEATS).median_s
                    times.setdefault((work.name, name, rows), []).append(seconds)
            lb.get_backend("c").shard_rows = 0
    for (work, name, rows), values in times.items():
        print(f"{work:<16} {name:<6} {rows:>3} rows: {statistics.median(values) * 1e3:8.3f} ms "
              f"(rounds: {', '.join(f'{v * 1e3:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
