"""Plant a regression and check that `lstmbench compare` flags it, and that it flags nothing
on an identical rebuild (issue 22; docs/benchmarks.md, "Regressions").

In a throwaway clone of the repository's HEAD it makes two commits on top of it: one that
changes nothing (``git commit --allow-empty``: a rebuild of the same code under another
hash), and one where the ``c`` backend does every training step's forward and backward twice
(a step about twice as slow, results unchanged). Then, ``--tries`` times each, it runs
``lstmbench compare BASE IDENTICAL`` (must exit 0) and ``lstmbench compare BASE PLANTED``
(must exit 1 and name ``c``), with asv building the commits into an environment kept under
``--env-dir`` between drills. Exits 1 if any try went the wrong way.

    python tools/regression_drill.py                 # 5 tries each, what lstmbench compare runs
    python tools/regression_drill.py --tries 1       # the quick form tests/test_regressions.py runs
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lstmbench.bench.regressions import NOISE_FACTOR, TRACKED  # noqa: E402

PLANTED = '''

# planted by tools/regression_drill.py: every training step runs its forward and backward twice
_fused_step_once = CKernel._fused_step


def _fused_step_twice(self, state, x, y, scalars, **kw):
    self._loss_and_gradient(state, x, y, **{k: v for k, v in kw.items() if k != "return_state"})
    return _fused_step_once(self, state, x, y, scalars, **kw)


CKernel._fused_step = _fused_step_twice
'''
MACHINE = "drill"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def make_clone(where: Path) -> tuple[Path, dict[str, str]]:
    """The clone and the hashes of its base, identical and planted commits."""
    clone = where / "repo"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    for key, value in (("user.name", "drill"), ("user.email", "drill@invalid")):
        git(clone, "config", key, value)
    base = git(clone, "rev-parse", "HEAD")
    git(clone, "commit", "--quiet", "--allow-empty", "-m", "drill: the same code under another hash")
    identical = git(clone, "rev-parse", "HEAD")
    git(clone, "checkout", "--quiet", "-b", "planted", base)
    with open(clone / "backends" / "c_kernel" / "__init__.py", "a") as f:
        f.write(PLANTED)
    git(clone, "commit", "--quiet", "-am", "drill: c does its step work twice")
    return clone, {"base": base, "identical": identical, "planted": git(clone, "rev-parse", "HEAD")}


def write_config(clone: Path, env_dir: Path) -> Path:
    """The clone's asv configuration with its environments in ``env_dir`` (kept between drills:
    creating one installs numpy, numba, scipy, ... from PyPI)."""
    text = (clone / "asv.conf.json").read_text()
    conf = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))
    conf.update(env_dir=str(env_dir), results_dir=str(clone / ".asv" / "results"), html_dir=str(clone / ".asv" / "html"))
    path = clone / "asv.drill.json"
    path.write_text(json.dumps(conf, indent=2))
    return path


def compare(clone: Path, config: Path, base: str, head: str, factor: float, bench: str) -> tuple[int, str, float]:
    """(exit code, output, seconds) of `lstmbench compare base head` in the clone."""
    argv = [sys.executable, "-m", "lstmbench.cli", "compare", base, head, "--config", str(config), "--machine",
            MACHINE, "--factor", f"{factor:g}", "--bench", bench]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=clone, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def flags_c(output: str) -> bool:
    """Whether asv's comparison table marks a benchmark of the c backend worse (its row's
    change column is "+": larger, which every tracked figure counts as worse)."""
    return re.search(r"^\|\s*\+\s*\|.*\('c',", output, re.M) is not None


def drill(tries: int, factor: float, bench: str, env_dir: Path, where: Path) -> list[dict]:
    clone, commits = make_clone(where)
    config = write_config(clone, env_dir)
    subprocess.run(["asv", "machine", "--yes", "--machine", MACHINE, "--config", str(config)], cwd=clone,
                   check=True, capture_output=True)
    outcomes = []
    for k in range(tries):
        for kind, expected in (("identical", 0), ("planted", 1)):
            code, output, seconds = compare(clone, config, commits["base"], commits[kind], factor, bench)
            ok = code == expected and (kind == "identical" or flags_c(output))
            outcomes.append({"try": k + 1, "kind": kind, "exit": code, "ok": ok, "seconds": round(seconds, 1)})
            print(f"try {k + 1} {kind:9s}: exit {code} ({'as expected' if ok else 'WRONG'}), {seconds:.0f} s",
                  flush=True)
            for row in re.findall(r"^\|\s*[+-]\s*\|.*$", output, re.M):  # asv's changed rows
                print("   ", " ".join(row.split()), flush=True)
            if not ok:
                print(output[-4000:], flush=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tries", type=int, default=5, help="comparisons of each kind (default 5)")
    p.add_argument("--factor", type=float, default=NOISE_FACTOR, help=f"as lstmbench compare (default {NOISE_FACTOR})")
    p.add_argument("--bench", default=TRACKED, help=f"asv benchmark regex (default {TRACKED!r}: what compare runs)")
    p.add_argument("--env-dir", type=Path, default=Path.home() / ".cache" / "lstmbench" / "asv-drill-env",
                   help="asv's environments, kept between drills")
    p.add_argument("--json", type=Path, help="also write the outcomes here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lstmbench-drill-") as where:
        outcomes = drill(args.tries, args.factor, args.bench, args.env_dir, Path(where))
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=2))
    wrong = [o for o in outcomes if not o["ok"]]
    print(f"{len(outcomes) - len(wrong)} of {len(outcomes)} comparisons as expected (factor {args.factor:g})")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
