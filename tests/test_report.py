"""`lstmbench report`: the offline HTML page of the asv history.

The fixture writes genuine asv results: benchmarks.json from asv's own discovery of
benchmarks/ (the script `asv run` uses, saved by asv's Benchmarks), machine.json by asv's
Machine, and a result file per fake commit by asv's Results API (add_result, save), with
plausible numbers, a failed measurement (None) and a skipped backend (NaN), as `asv run`
records them. Discovering the real suite also checks that the report still finds the
benchmarks it charts by name.
"""

import ast
import itertools
import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lstmbench.bench import report
from lstmbench.cli import main

asv = pytest.importorskip("asv")
import asv.benchmarks  # noqa: E402
import asv.config  # noqa: E402
import asv.machine  # noqa: E402
import asv.results  # noqa: E402
import asv.runner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MACHINE = {"machine": "bench-box", "os": "Linux 6.1.0", "arch": "x86_64",
           "cpu": "AMD EPYC 9R14 96-Core Processor", "num_cpu": "2", "ram": "25235677184"}
OTHER_MACHINE = dict(MACHINE, machine="laptop", cpu="Intel(R) Core(TM) i7-8565U", num_cpu="8")
COMMITS = ["3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6d7e8f901", "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
           "c0ffee00112233445566778899aabbccddeeff00"]
DAY_MS = 86_400_000
FIRST_DATE = 1_796_000_000_000  # a JavaScript timestamp, as asv records commit dates
ENV = "virtualenv-py3.11"
BACKEND_FACTOR = {"numpy": 1.0, "numba": 0.09, "c": 0.065}  # step time relative to the reference
# A failed measurement (asv: None) in the middle commit and one in the latest.
# What the fake commits ran (like `asv run -b ...`): the charted three, one more per kind
# of parameters (with backend, without, none), and not the rest, to keep the test fast.
RECORDED = {report.TRAIN_STEP, report.SPEEDUP, report.EXPONENT, "bench_train_step.Suite.track_pct_fma_peak",
            "bench_distributed.GradientAllreduce.time_allreduce", "bench_train_step.Threads.track_backend_threads"}
FAILED = {(1, report.TRAIN_STEP, ("numba", 128, 32)), (2, report.SPEEDUP, ("c", 512, 128))}


def fake_value(bench: dict, combo: dict, commit: int):
    """A plausible number for one parameter combination of one benchmark at one commit:
    every commit 4% faster; cuda skipped (no GPU: NaN); FAILED ones None."""
    if (commit, bench["name"], tuple(combo.values())) in FAILED:
        return None
    backend = combo.get("backend", "numpy")
    if backend not in BACKEND_FACTOR:
        return math.nan
    size = 1.0
    for name in ("hidden", "batch", "sequences"):
        if name in combo:
            size *= (combo[name] / 32) ** 0.8
    faster = 1 - 0.04 * commit
    if bench["name"] == report.SPEEDUP:
        return 1 / BACKEND_FACTOR[backend] / faster / (1 + 0.1 * math.log2(size))
    if bench["name"] == report.EXPONENT:
        return (0.98 if combo["mode"] == "fixed batch" else 1.1) + 0.01 * commit + 0.05 * BACKEND_FACTOR[backend]
    if bench["unit"] == "seconds":
        return 12.9e-3 * size * BACKEND_FACTOR[backend] * faster
    if bench["unit"] == "bytes":
        return 180e6 + 4e3 * size
    return 40.0 * faster  # GFLOP/s, % of peak, threads


def asv_benchmarks(tmp: Path) -> list[dict]:
    """The real suite's benchmark descriptions, from the discovery script `asv run` runs."""
    out = tmp / "discovered.json"
    subprocess.run([sys.executable, asv.runner.BENCHMARK_RUN_SCRIPT, "discover", str(REPO / "benchmarks"), str(out)],
                   cwd=tmp, check=True, capture_output=True, timeout=120)
    return json.loads(out.read_text())


def write_results(results: Path, benchmarks: list[dict], machine: dict, commits: list[str], value=None) -> None:
    """machine.json and one result file per commit, written by asv's own classes; ``value``:
    (bench, combo, commit index) -> the number (default fake_value)."""
    m = asv.machine.Machine()
    m.__dict__.update(machine)
    m.save(str(results))
    for k, commit in enumerate(commits):
        r = asv.results.Results({**machine, "python": "3.11"}, {}, commit, FIRST_DATE + k * DAY_MS, "3.11", ENV, {})
        for bench in benchmarks:
            combos = [dict(zip(bench["param_names"], map(ast.literal_eval, c)))
                      for c in itertools.product(*bench["params"])]  # one, {}, without params
            values = [(value or fake_value)(bench, c, k) for c in combos]
            timed = bench["type"] == "time"
            ok = [v is not None and not math.isnan(v) for v in values]
            samples = [[v * 0.98, v, v * 1.03] if good and timed else None for v, good in zip(values, ok)]
            number = [1 if good and timed else None for good in ok]
            r.add_result(bench, asv.runner.BenchmarkResult(values, samples, number, 0, "", None), duration=1.5)
        r.save(str(results))


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("asv")
    results = tmp / "results"
    benchmarks = asv_benchmarks(tmp)
    conf = asv.config.Config.from_json({"repo": ".", "results_dir": str(results), "benchmark_dir": "benchmarks"})
    asv.benchmarks.Benchmarks(conf, benchmarks).save()
    write_results(results, [b for b in benchmarks if b["name"] in RECORDED], MACHINE, COMMITS)
    train_step = [b for b in benchmarks if b["name"] == report.TRAIN_STEP]  # a second machine: one quick run
    write_results(results, train_step, OTHER_MACHINE, COMMITS[-1:])
    return results


@pytest.fixture(scope="module")
def page(results_dir, tmp_path_factory) -> Path:
    return report.write_report(results_dir, tmp_path_factory.mktemp("report") / "out")


class Parsed(HTMLParser):
    """The page's tags with their attributes, its tables as rows of cell texts, and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parsed(page: Path) -> Parsed:
    return Parsed(page.read_text(encoding="utf-8"))


def table_after(page: Path, heading: str) -> list[list[str]]:
    """The first table after the <h3> ``heading`` (the latest-values table of a benchmark)."""
    text = page.read_text(encoding="utf-8")
    start = text.index(f"<h3>{heading}</h3>")
    return Parsed(text[start:]).tables[0]


def test_the_report_charts_every_backend_over_the_commits(page, results_dir):
    doc = parsed(page)
    text = " ".join(doc.text)
    commits_table = next(t for t in doc.tables if t[0][:3] == ["#", "commit", "date (UTC)"])
    assert [row[1] for row in commits_table[1:]] == [c[:8] for c in COMMITS]  # in date order
    for title in report.HEADLINE.values():
        assert f"<h3>{title}</h3>" in page.read_text()
    backends = json.loads((results_dir / "benchmarks.json").read_text())[report.TRAIN_STEP]["params"][0]
    step_table = table_after(page, report.HEADLINE[report.TRAIN_STEP])
    assert step_table[0][1:] == [ast.literal_eval(b) for b in backends]  # a column per backend, cuda (skipped) included
    assert "cuda" in text and "Never measured here" in text
    assert MACHINE["cpu"] in text and "23.5 GiB" in text  # machine.json
    assert "Machine laptop" in text and "Machine bench-box" in text


def test_latest_tables_hold_the_latest_commit_values(page, results_dir):
    benchmarks = json.loads((results_dir / "benchmarks.json").read_text())
    assert "in ms:" in page.read_text()
    rows = {r[0]: r for r in table_after(page, report.HEADLINE[report.TRAIN_STEP])}
    header = rows.pop("hidden, batch")
    for (hidden, batch), backend in itertools.product([(32, 32), (512, 128)], BACKEND_FACTOR):
        cell = rows[f"hidden {hidden}, batch {batch}"][header.index(backend)]
        expected = fake_value(benchmarks[report.TRAIN_STEP], {"backend": backend, "hidden": hidden, "batch": batch}, 2)
        assert float(cell) == pytest.approx(expected * 1e3, rel=1e-3), cell
    assert rows["hidden 32, batch 32"][header.index("cuda")] == "skipped"
    speedups = {r[0]: r for r in table_after(page, report.HEADLINE[report.SPEEDUP])}
    assert speedups["hidden 512, batch 128"][speedups["hidden, batch"].index("c")] == "failed"
    exponents = {r[0]: r for r in table_after(page, report.HEADLINE[report.EXPONENT])}
    expected = fake_value(benchmarks[report.EXPONENT], {"backend": "numba", "mode": "fixed batch"}, 2)
    assert float(exponents["mode fixed batch"][exponents["mode"].index("numba")]) == pytest.approx(expected, rel=1e-3)


def test_the_steps_table_names_the_commit_a_regression_started_at(results_dir, tmp_path):
    """Eight commits; c's step twice as slow from the sixth on, the others flat within 2%:
    asv's step detection (on the page) finds that step, at that commit, and nothing else."""
    commits = [f"{k:02x}" * 20 for k in range(8)]
    bench = json.loads((results_dir / "benchmarks.json").read_text())[report.TRAIN_STEP]
    shutil.copy(results_dir / "benchmarks.json", tmp_path / "benchmarks.json")

    def value(bench, combo, k):
        v = fake_value(bench, combo, 0)
        wobble = 1 + 0.02 * math.sin(3.1 * k + combo["hidden"] + combo["batch"])  # deterministic noise
        return v if v is None or math.isnan(v) else v * wobble * (2 if combo["backend"] == "c" and k >= 5 else 1)

    write_results(tmp_path, [bench], MACHINE, commits, value)
    page = report.write_report(tmp_path, tmp_path / "out")
    steps = next(t for t in parsed(page).tables if "from commit" in t[0])
    assert {row[0] for row in steps[1:]} == {"c"}
    assert len(steps) - 1 == len(bench["params"][1]) * len(bench["params"][2])  # every (H, B) panel of c
    for line, _, commit, _, before, after, ratio, direction in steps[1:]:
        assert commit == commits[5][:8] and direction == "worse"
        assert float(ratio) == pytest.approx(2, rel=0.05) and float(after) > float(before)


def test_charts_are_png_files_next_to_the_page(page):
    from PIL import Image

    imgs = [a for tag, a in parsed(page).tags if tag == "img"]
    # a chart per recorded benchmark and the latest grid; the second machine: TrainStep and its grid
    assert len({a["src"] for a in imgs}) == len(imgs) == len(RECORDED) + 1 + 2
    for a in imgs:
        path = page.parent / a["src"]
        assert path.parent == page.parent and path.is_file(), a["src"]
        with Image.open(path) as im:
            im.load()  # decodes every pixel
            assert im.format == "PNG" and im.size == (int(a["width"]), int(a["height"]))


def test_other_benchmarks_are_shown_when_recorded(page):
    text = page.read_text()
    for name in RECORDED - set(report.HEADLINE):
        assert f"<h3>{name.split('.', 1)[1]}</h3>" in text
    assert "Epoch.time_epoch" not in text  # in benchmarks.json, but never run


def test_results_of_another_benchmark_version_are_left_out(results_dir, tmp_path):
    """As on asv's site: a result recorded by other code of the benchmark is not comparable."""
    shutil.copytree(results_dir, tmp_path / "results")
    path = tmp_path / "results" / "benchmarks.json"
    benchmarks = json.loads(path.read_text())
    benchmarks[report.TRAIN_STEP]["version"] = "0" * 64
    path.write_text(json.dumps(benchmarks))
    _, machines = report.load_results(tmp_path / "results")
    assert [m.name for m in machines] == ["bench-box"]  # laptop ran TrainStep only: nothing left
    assert machines[0].stale == len(COMMITS)
    assert not any(report.TRAIN_STEP in r.values for r in machines[0].runs)


def test_the_page_references_nothing_outside_its_folder(page):
    doc = parsed(page)
    assert not [t for t, _ in doc.tags if t in ("script", "link", "iframe", "object", "embed", "base")]
    for _, attrs in doc.tags:
        for name in ("src", "href", "srcset", "data"):
            value = attrs.get(name)
            assert value is None or not re.match(r"[a-z][a-z0-9+.-]*:|//|/", value, re.I), value
    style = re.findall(r"<style>(.*?)</style>", page.read_text(), re.S)
    assert style and not any("url(" in s or "@import" in s for s in style)


def test_machine_selects_one_and_cli_prints_the_page(results_dir, tmp_path, capsys):
    assert main(["report", "--results", str(results_dir), "--out", str(tmp_path / "r"), "--machine", "laptop"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str((tmp_path / "r" / "index.html").resolve())
    text = " ".join(parsed(Path(out)).text)
    assert "Machine laptop" in text and "bench-box" not in text
    assert "No results for" in text  # laptop ran TrainStep only: the other headline charts say so


def test_results_dir_comes_from_asv_conf_json_with_comments(tmp_path, monkeypatch):
    assert report.find_results_dir(str(REPO / "asv.conf.json")) == REPO / ".asv/results"
    (tmp_path / "asv.conf.json").write_text('{\n  // a comment, as asv allows\n  "version": 1, "repo": ".",\n'
                                            '  "results_dir": "out/res" // where\n}\n')
    monkeypatch.chdir(tmp_path)
    assert report.find_results_dir() == Path("out/res")
    assert report.find_results_dir(results="elsewhere") == Path("elsewhere")


@pytest.mark.parametrize("case", ["no config", "no results dir", "no results", "unknown machine"])
def test_user_errors_are_one_line(case, results_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["report", "--out", str(tmp_path / "out")]
    if case == "no results dir":
        (tmp_path / "asv.conf.json").write_text('{"version": 1, "repo": ".", "results_dir": ".asv/results"}')
    elif case == "no results":
        shutil.copy(results_dir / "benchmarks.json", tmp_path)
        args += ["--results", str(tmp_path)]
    elif case == "unknown machine":
        args += ["--results", str(results_dir), "--machine", "nosuch"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    expected = {"no config": "no asv configuration asv.conf.json in this directory",
                "no results dir": "no asv results folder .asv/results",
                "no results": "no results for the benchmarks in",
                "unknown machine": "no results for machine 'nosuch' in"}[case]
    assert err.startswith("error: ") and expected in err and "\n" not in err, err
    if case == "unknown machine":
        assert err.endswith("; it has results for bench-box, laptop")
    assert not (tmp_path / "out").exists()


# --- asv files that are valid JSON of the wrong shape: no traceback ---------------------

BENCH_BOX_LATEST = f"bench-box/{COMMITS[-1][:8]}-{ENV}.json"  # the latest commit's result file


def copy_with_change(results_dir: Path, tmp_path: Path, file: str, change) -> Path:
    """A copy of the results in which ``change`` edits the JSON of ``file`` (relative to
    the results folder) in place, or returns what replaces it."""
    copy = tmp_path / "results"
    shutil.copytree(results_dir, copy)
    path = copy / file
    data = json.loads(path.read_text())
    replaced = change(data)
    path.write_text(json.dumps(data if replaced is None else replaced))
    return copy


def benchmark_field(benchmark: str, **fields):
    """A change setting ``fields`` of one benchmark in benchmarks.json."""
    return lambda benchmarks: benchmarks[benchmark].update(fields)


def result_column(column: str, value, name: str = report.TRAIN_STEP):
    """A change setting one column (asv's result_columns: result, params, version, ...) of
    one benchmark's entry in a result file."""
    def change(data):
        data["results"][name][data["result_columns"].index(column)] = value
    return change


def drop_last_value(data):
    data["results"][report.TRAIN_STEP][data["result_columns"].index("result")].pop()


BROKEN_BENCHMARKS = {  # change to benchmarks.json -> what the error names
    "params not a list of lists": (benchmark_field(report.TRAIN_STEP, params=["'numpy'", "32", "32"]),
                                   [report.TRAIN_STEP, "params"]),
    "params a number": (benchmark_field(report.EXPONENT, params=2), [report.EXPONENT, "params"]),
    "params an empty list": (benchmark_field(report.SPEEDUP, params=[[], ["32"], ["32"]]), [report.SPEEDUP, "params"]),
    "param_names of the wrong length": (benchmark_field(report.TRAIN_STEP, param_names=["backend", "hidden"]),
                                        [report.TRAIN_STEP, "param_names"]),
    "unit a number": (benchmark_field(report.TRAIN_STEP, unit=0.001), [report.TRAIN_STEP, "unit"]),
    "name another one": (benchmark_field(report.TRAIN_STEP, name=report.SPEEDUP), [report.TRAIN_STEP, "name"]),
    "a benchmark a string": (lambda b: b.update({report.TRAIN_STEP: "time_train_step"}),
                             [report.TRAIN_STEP, "not an object"]),
    "version a string": (lambda b: b.update(version="2"), ["format version 2"]),
    "a list": (lambda b: [b], ["benchmarks.json"]),
}


@pytest.mark.parametrize("case", BROKEN_BENCHMARKS)
def test_a_malformed_benchmarks_json_is_a_one_line_error(case, results_dir, tmp_path, capsys):
    change, named = BROKEN_BENCHMARKS[case]
    results = copy_with_change(results_dir, tmp_path, "benchmarks.json", change)
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert str(results / "benchmarks.json") in err and all(n in err for n in named), err
    assert not (tmp_path / "out").exists()


BROKEN_RESULT_FILES = {  # change to the latest commit's result file on bench-box -> what the warning names
    "results a string": (lambda d: d.update(results="oops"), "results"),
    "a benchmark's results a string": (lambda d: d["results"].update({report.TRAIN_STEP: "oops"}), report.TRAIN_STEP),
    "values a string": (result_column("result", "oops"), report.TRAIN_STEP),
    "values of the wrong length": (drop_last_value, "23 values for 24 parameter combinations"),
    "a value a string": (result_column("result", ["fast"] * 24), report.TRAIN_STEP),
    "a value too large for a float": (result_column("result", [10**400] * 24), report.TRAIN_STEP),
    "parameters not a list of lists": (result_column("params", "backend"), report.TRAIN_STEP),
    "commit_hash a number": (lambda d: d.update(commit_hash=12345), "commit_hash"),
    "date a string": (lambda d: d.update(date="yesterday"), "date"),
    "date past the year 9999": (lambda d: d.update(date=10**20), "date"),
    "env_name a number": (lambda d: d.update(env_name=3), "env_name"),
    "params a list": (lambda d: d.update(params=[d["params"]]), "params"),
    "result_columns a string": (lambda d: d.update(result_columns="result"), "result_columns"),
    "version a string": (lambda d: d.update(version="2"), "format version 2"),
    "a list": (lambda d: [d], BENCH_BOX_LATEST),
    "a number": (lambda d: 7, BENCH_BOX_LATEST),
}


def commits_on_page(page: Path, machine: str) -> list[str]:
    text = page.read_text(encoding="utf-8")
    table = Parsed(text[text.index(f"<h2>Machine {machine}</h2>"):]).tables[1]  # after machine.json's
    assert table[0][:2] == ["#", "commit"]
    return [row[1] for row in table[1:]]


@pytest.mark.parametrize("case", BROKEN_RESULT_FILES)
def test_a_malformed_result_file_is_skipped_with_a_warning(case, results_dir, tmp_path, capsys):
    change, named = BROKEN_RESULT_FILES[case]
    results = copy_with_change(results_dir, tmp_path, BENCH_BOX_LATEST, change)
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    warning = f"warning: skipped unreadable result file {BENCH_BOX_LATEST}: "
    assert captured.err.startswith(warning) and captured.err.count("\n") == 1, captured.err
    assert named in captured.err and "Traceback" not in captured.err, captured.err
    assert commits_on_page(Path(captured.out.strip()), "bench-box") == [c[:8] for c in COMMITS[:-1]]


@pytest.mark.parametrize("change", [lambda m: [m], lambda m: m.update(version="1")], ids=["a list", "version a string"])
def test_a_malformed_machine_json_is_skipped_with_a_warning(change, results_dir, tmp_path, capsys):
    results = copy_with_change(results_dir, tmp_path, "bench-box/machine.json", change)
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: skipped unreadable result file bench-box/machine.json: "), captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    page = Path(captured.out.strip())
    assert commits_on_page(page, "bench-box") == [c[:8] for c in COMMITS]  # its results are all there
    assert MACHINE["cpu"] not in page.read_text() and OTHER_MACHINE["cpu"] in page.read_text()


@pytest.mark.parametrize("conf, named", [('[{"version": 1}]', "not a JSON object"),
                                         ('{"version": 1, "results_dir": 3}', "results_dir")],
                         ids=["a list", "results_dir a number"])
def test_a_malformed_asv_conf_json_is_a_one_line_error(conf, named, tmp_path, monkeypatch, capsys):
    (tmp_path / "asv.conf.json").write_text(conf)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert "asv.conf.json" in err and named in err, err


def test_without_asv_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "asv", None)  # import asv raises ImportError
    with pytest.raises(report.ReportError, match=re.escape("pip install -e '.[dev]'")):
        report.write_report(tmp_path, tmp_path / "out")


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe: JSON messages ended by a
    NUL byte, Chromium reading fd 3 and writing fd 4. Standard library only."""

    def __init__(self, argv: list[str], stderr, timeout: float = 30.0):
        to_child, self._to = os.pipe()
        self._from, from_child = os.pipe()
        # a small Python moves the pipes onto fds 3 and 4 and becomes Chromium (sh's
        # redirections take one-digit fds only)
        move = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execvp(sys.argv[3], sys.argv[3:])"
        self.proc = subprocess.Popen([sys.executable, "-c", move, str(to_child), str(from_child), *argv],
                                     pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL, stdout=stderr,
                                     stderr=stderr)
        os.close(to_child)
        os.close(from_child)
        self.deadline = time.monotonic() + timeout
        self.events: list[dict] = []
        self._buf = b""
        self._id = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m, i=self._id: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait(self, matches) -> dict:
        """The next message that ``matches``; every event read on the way is kept."""
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if matches(msg):
                    return msg
            ready, _, _ = select.select([self._from], [], [], max(0.0, self.deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from, 1 << 16)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buf += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(10)
        except (OSError, RuntimeError, TimeoutError, EOFError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to)
            os.close(self._from)


def load_in_chromium(url: str, tmp_path: Path) -> tuple[list, list[str]]:
    """Open ``url`` in headless Chromium; return every <img> as [src, complete, naturalWidth]
    once the page's load event has fired, and the URL of every request the page made."""
    argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
            f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-pipe", "about:blank"]
    with open(tmp_path / "chromium.log", "wb") as log:
        dt = DevTools(argv, log)
        try:
            target = dt.call("Target.createTarget", url="about:blank")["targetId"]
            s = dt.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            dt.call("Network.enable", s)  # from here on every request of the page is an event
            dt.call("Page.enable", s)
            dt.call("Page.navigate", s, url=url)
            while True:  # the load event fires after every image has loaded or failed
                dt.wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == s)
                where = dt.call("Runtime.evaluate", s, expression="[location.href, document.readyState]",
                                returnByValue=True)["result"]["value"]
                if where == [url, "complete"]:
                    break
            images = dt.call("Runtime.evaluate", s, returnByValue=True, expression=(
                "Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth])"))
        except (OSError, TimeoutError, EOFError, RuntimeError) as exc:
            raise AssertionError(f"{exc}; Chromium's log:\n{(tmp_path / 'chromium.log').read_text()[-3000:]}")
        finally:
            dt.close()
    requests = [e["params"]["request"]["url"] for e in dt.events
                if e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == s]
    return images["result"]["value"], requests


def test_chromium_shows_every_chart_without_a_network(page, tmp_path):
    """The page in headless Chromium, driven over the DevTools protocol on a pipe (stdlib
    only, the page unchanged): the Network domain reports every request the page makes,
    and after the load event every <img> must be decoded (naturalWidth > 0). A broken
    image path fails the first check; a script, stylesheet, font or image from a server
    fails the second, whether or not the machine has a network."""
    if shutil.which("chromium") is None:
        # CI installs it and sets LSTMBENCH_REQUIRE_CHROMIUM=1, so that there a missing browser fails
        if os.environ.get("LSTMBENCH_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not on PATH and LSTMBENCH_REQUIRE_CHROMIUM=1")
        pytest.skip("chromium is not on PATH (apt-get install chromium)")
    copy = tmp_path / "report"
    shutil.copytree(page.parent, copy)
    url = (copy / "index.html").as_uri()
    images, requests = load_in_chromium(url, tmp_path)
    expected = [a["src"] for tag, a in parsed(page).tags if tag == "img"]
    assert [src for src, _, _ in images] == expected
    assert [(src, w) for src, complete, w in images if not (complete and w > 0)] == []
    assert url in requests
    assert [r for r in requests if not r.startswith("file://")] == []
