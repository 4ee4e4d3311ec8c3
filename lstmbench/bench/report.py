"""`lstmbench report`: a static, offline HTML page of the asv history.

asv's own site (`asv publish`) loads jQuery, flot and bootstrap from CDNs, so without a
network it shows only an error. This page is plain HTML with inline CSS and PNG charts
drawn by matplotlib; it needs nothing but the folder it is written to.

The results are read with asv's own loaders (benchmarks.json for the benchmarks and
their parameters, ``asv.results.Results.load`` for each result file), so the page shows
what asv's site would: results recorded by an older version of a benchmark's code are
left out, a failed measurement (None) or a skipped one (NaN) is a gap. asv's loaders take
any JSON, so each file is first checked for what the page relies on: a result file that
fails is skipped with a warning, a benchmarks.json that fails (the whole page needs it) is
a ReportError naming the file and what is wrong.
"""

from __future__ import annotations

import ast
import html
import itertools
import math
import re
import reprlib
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lstmbench.training.checkpoint import atomic_write, check_output_dir
from lstmbench.errors import LstmbenchError

TRAIN_STEP = "bench_train_step.TrainStep.time_train_step"
SPEEDUP = "bench_train_step.Speedup.track_speedup"
EXPONENT = "bench_scaling.ScalingExponent.track_exponent"
# Charted first, in this order, with these titles; every other benchmark follows.
HEADLINE = {
    TRAIN_STEP: "Training step time",
    SPEEDUP: "Speedup over the NumPy reference (1 BLAS thread)",
    EXPONENT: "Dataset-scaling exponent a (epoch time ~ N^a)",
}
LATEST_GRID = (TRAIN_STEP, SPEEDUP)  # drawn again as bars at their latest commit
LINE_PARAM = "backend"  # one line (one colour) per value of this parameter; the others make panels

DPI = 100
MAX_COMMIT_LABELS = 8  # per panel; with more commits only every k-th is labelled
NOT_RUN = ...  # a value for a commit that did not run the benchmark (None: failed, NaN: skipped)


class ReportError(LstmbenchError):
    """The asv results cannot be found or hold nothing to report."""


def _asv():
    """asv's modules, or a ReportError saying how to install it (it is in the dev extra)."""
    try:
        import asv.benchmarks
        import asv.machine
        import asv.results
        import asv.util
    except ImportError:
        raise ReportError("lstmbench report reads the results with asv, which is not installed here: "
                          "pip install -e '.[dev]'") from None
    return asv


def find_results_dir(config: str | None = None, results: str | None = None) -> Path:
    """``results`` if given, else the results_dir of asv's configuration (``config``, or
    asv.conf.json here), relative to the configuration's folder."""
    if results:
        return Path(results)
    path = Path(config or "asv.conf.json")
    if not path.is_file():
        where = "" if config else " in this directory (run from the project's root, or pass --config or --results)"
        raise ReportError(f"no asv configuration {path}{where}")
    asv = _asv()
    try:  # asv's own reader: the file has // comments
        conf = asv.util.load_json(str(path), js_comments=True)
    except (asv.util.UserError, ValueError, OSError) as exc:
        raise ReportError(f"cannot read asv's configuration {path}: {exc}") from None
    if not isinstance(conf, dict):
        raise ReportError(f"asv's configuration {path} is {_shown(conf)}, not a JSON object")
    results_dir = conf.get("results_dir", "results")  # "results" is asv's default
    if not isinstance(results_dir, str):
        raise ReportError(f"asv's configuration {path} has the results_dir {_shown(results_dir)}, not a path")
    return path.parent / results_dir


def _shown(value) -> str:
    """A value of a file, for a message: its repr, shortened."""
    return reprlib.repr(value)


# --------------------------------------------------------------------------- loading


@dataclass
class Run:
    """One asv result file: one commit in one environment on one machine."""

    commit: str
    date: int | None  # the commit's date, a JavaScript timestamp (ms), as asv records it
    env: str
    values: dict[str, list]  # benchmark -> a value per parameter combination: None failed, NaN skipped


@dataclass
class Machine:
    name: str
    info: dict
    runs: list[Run]
    python: list[str] = field(default_factory=list)
    stale: int = 0  # results of an older version of a benchmark's code, left out as asv's site does
    unreadable: list[str] = field(default_factory=list)

    @property
    def envs(self) -> list[str]:
        return sorted({r.env for r in self.runs})


def load_results(results_dir: str | Path, machine: str | None = None) -> tuple[dict, list[Machine]]:
    """benchmarks.json's benchmarks (name -> asv's description) and the machines with
    results for them (only ``machine`` if given); a ReportError when there is nothing."""
    asv = _asv()
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ReportError(f"no asv results folder {results_dir} (`asv run` writes it; or pass --results DIR)")
    bench_file = results_dir / "benchmarks.json"
    if not bench_file.is_file():
        raise ReportError(f"no results for the benchmarks in {results_dir}: it has no benchmarks.json "
                          "(`asv run` writes it)")
    benchmarks = _load_benchmarks(asv, bench_file)
    names = sorted(p.parent.name for p in results_dir.glob("*/machine.json"))
    if machine is not None:
        if machine not in names:
            known = f"it has results for {', '.join(names)}" if names else "it has results for no machine"
            raise ReportError(f"no results for machine {machine!r} in {results_dir}; {known}")
        names = [machine]
    machines = [m for m in (_load_machine(asv, results_dir / n, benchmarks) for n in names) if m.runs]
    if not machines:
        which = f"machine {machine!r}" if machine else "any machine"
        raise ReportError(f"no results for the benchmarks in {results_dir} for {which} (run `asv run` first)")
    return benchmarks, machines


def _load_machine(asv, folder: Path, benchmarks: dict) -> Machine:
    m = Machine(folder.name, {}, [])
    try:
        m.info = _read_json(asv, folder / "machine.json", asv.machine.Machine.api_version)
    except ReportError as exc:
        m.unreadable.append(f"{folder.name}/machine.json: {exc}")
    for path in sorted(folder.glob("*.json")):
        if path.name == "machine.json":
            continue
        try:
            r = _load_result_file(asv, path, folder.name)
        except ReportError as exc:
            m.unreadable.append(f"{folder.name}/{path.name}: {exc}")
            continue
        keys = r.get_result_keys(benchmarks)  # drops results of another version of the benchmark
        m.stale += len(set(r.get_all_result_keys()) & benchmarks.keys() - keys)
        if not keys:
            continue
        m.runs.append(Run(r.commit_hash, r.date, r.env_name,
                          {k: r.get_result_value(k, benchmarks[k]["params"]) for k in keys}))
        if r.params.get("python"):
            m.python.append(str(r.params["python"]))
    m.python = sorted(set(m.python))
    return m


# --------------------------------------------------------------------------- checking what is loaded


def _read_json(asv, path: Path, api_version: int) -> dict:
    """A file of asv's: a JSON object of format ``api_version``, read by asv (which checks
    the version); a ReportError naming the file when it is not one."""
    try:
        return asv.util.load_json(str(path), api_version=api_version)
    except asv.util.UserError as exc:  # asv's message names the file
        raise ReportError(str(exc)) from None
    except (OSError, ValueError) as exc:  # a folder, no permission, not UTF-8
        raise ReportError(f"cannot read {path}: {exc}") from None
    except TypeError:  # asv looked "version" up in a list or a number, or compared a string version
        raise ReportError(f"{path} holds no JSON object of asv's format version {api_version}") from None


def _load_benchmarks(asv, path: Path) -> dict:
    """benchmarks.json: benchmark name -> asv's description, every one checked, since
    the whole page needs them (a ReportError naming the file and the benchmark)."""
    benchmarks = _read_json(asv, path, asv.benchmarks.Benchmarks.api_version)
    for name, bench in benchmarks.items():
        problem = _benchmark_problem(name, bench)
        if problem:
            raise ReportError(f"{path}: the benchmark {name} {problem} (`asv run` writes the file anew)")
    return benchmarks


def _benchmark_problem(name: str, bench) -> str | None:
    """What makes benchmarks.json's entry ``name`` unusable for the page, or None."""
    if not isinstance(bench, dict):
        return f"is {_shown(bench)}, not an object"
    if bench.get("name") != name:
        return f"has the name {_shown(bench.get('name'))}"
    params, param_names = bench.get("params"), bench.get("param_names")
    if not _is_param_lists(params):
        return f"has the params {_shown(params)}, not a list of non-empty lists of values"
    if not (isinstance(param_names, list) and all(isinstance(n, str) for n in param_names)):
        return f"has the param_names {_shown(param_names)}, not a list of names"
    if len(param_names) != len(params):
        return f"has {len(param_names)} param_names for {len(params)} lists of params"
    if not isinstance(bench.get("unit", ""), str):
        return f"has the unit {_shown(bench['unit'])}, not a string"
    return None


def _is_param_lists(params) -> bool:
    """A benchmark's parameters as asv stores them: a list of non-empty lists of values
    (each the repr of one, a string)."""
    return isinstance(params, list) and all(
        isinstance(p, list) and p and all(isinstance(v, str) for v in p) for p in params)


def _load_result_file(asv, path: Path, machine: str):
    """One result file as asv's Results, once its JSON is checked for what asv's loader
    and get_result_value assume and the page uses; a ReportError if it fails.

    The file is read twice, here and by asv's loader: Results keeps a benchmark's raw
    values to itself, and their number must match its parameters'."""
    problem = _result_file_problem(_read_json(asv, path, asv.results.Results.api_version))
    if problem:
        raise ReportError(problem)
    try:
        return asv.results.Results.load(str(path), machine_name=machine)
    except (asv.util.UserError, ValueError, TypeError) as exc:  # another machine's file; a stats column no list
        raise ReportError(str(exc)) from None


def _is_timestamp(date) -> bool:
    """A commit's date as asv records it: a JavaScript timestamp (an integer, ms) of a
    date that can be printed, or None."""
    if date is None:
        return True
    if isinstance(date, bool) or not isinstance(date, int):
        return False
    try:
        _date(date)
    except (OverflowError, ValueError, OSError):  # past the year 9999, or out of the C library's range
        return False
    return True


RESULT_FILE_FIELDS = {  # a field of a result file -> (what it must be, a test of that)
    "commit_hash": ("a string", lambda v: isinstance(v, str)),
    "date": ("a JavaScript timestamp (an integer, ms)", _is_timestamp),
    "env_name": ("a string", lambda v: isinstance(v, str)),
    "params": ("an object", lambda v: isinstance(v, dict)),
    "result_columns": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v)),
    "results": ("an object", lambda v: isinstance(v, dict)),
}


def _result_file_problem(data: dict) -> str | None:
    """What in a result file's JSON is not as asv writes it, or None."""
    for name, (what, fits) in RESULT_FILE_FIELDS.items():
        if name not in data:
            return f"it has no {name}"
        if not fits(data[name]):
            return f"{name} is {_shown(data[name])}, not {what}"
    for name, entry in data["results"].items():
        problem = _result_entry_problem(data["result_columns"], entry)
        if problem:
            return f"the entry of {name} in its results {problem}"
    return None


def _result_entry_problem(columns: list[str], entry) -> str | None:
    """What is wrong with one benchmark's entry in a result file's results (a value per
    one of ``columns``: result, params, version, ...), or None."""
    if not isinstance(entry, list):
        return f"is {_shown(entry)}, not a list"
    fields = dict(zip(columns, entry))
    values, params = fields.get("result"), fields.get("params")
    if values is None:
        return None  # no values at all (asv: the environment failed to build)
    if not (isinstance(values, list) and all(_is_measurement(v) for v in values)):
        return f"has the values {_shown(values)}, not a list of numbers, None (failed) or NaN (skipped)"
    if not _is_param_lists(params):
        return f"has the params {_shown(params)}, not a list of non-empty lists of values"
    combinations = math.prod(len(p) for p in params)
    if len(values) != combinations:
        return f"has {len(values)} values for {combinations} parameter combinations"
    return None


def _is_measurement(value) -> bool:
    """One value asv recorded: a number (that converts to a float), None (failed) or NaN (skipped)."""
    if value is None or isinstance(value, float):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


# --------------------------------------------------------------------------- arranging


def _param(value: str) -> str:
    """A parameter as asv stores it (its repr: "'numba'", "32") as it reads."""
    try:
        return str(ast.literal_eval(value))
    except (ValueError, SyntaxError):
        return value


def _na(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _number(v) -> bool:
    """A measurement, not a failure (None), a skip (NaN) or NOT_RUN."""
    return v is not NOT_RUN and not _na(v)


def _by_date(r: Run):
    return (r.date is None, r.date or 0, r.commit)


@dataclass
class Grid:
    """One benchmark on one machine: its values per (panel, line) over the commits that ran it."""

    name: str
    unit: str
    commits: list[tuple[str, int | None]]  # (hash, date) in date order: the x axis
    panel_params: list[str]  # the parameters other than LINE_PARAM
    panels: list[str]  # a panel per combination of those
    lines: list[str]
    values: dict[tuple[str, str], list]  # (panel, line) -> value per commit, or None, NaN, NOT_RUN

    def series(self, panel: str, line: str) -> list[float]:
        """For plotting: NaN (a gap) wherever there is no number."""
        return [float(v) if _number(v) else math.nan for v in self.values[panel, line]]

    def latest(self) -> int | None:
        """Index of the last commit with at least one number."""
        for i in reversed(range(len(self.commits))):
            if any(_number(v[i]) for v in self.values.values()):
                return i
        return None

    def has_numbers(self, line: str) -> bool:
        return any(_number(x) for (_, ln), v in self.values.items() if ln == line for x in v)


def arrange(bench: dict, machine: Machine) -> Grid | None:
    """The machine's results of ``bench`` as panels and lines; None if it never ran."""
    name = bench["name"]
    runs = sorted((r for r in machine.runs if name in r.values), key=_by_date)
    if not runs:
        return None
    commits = list(dict.fromkeys((r.commit, r.date) for r in runs))
    col = {c[0]: i for i, c in enumerate(commits)}
    param_names, params = bench["param_names"], bench["params"]
    li = param_names.index(LINE_PARAM) if LINE_PARAM in param_names else None
    several_envs = len({r.env for r in runs}) > 1

    def labels(combo: tuple) -> tuple[str, str]:
        rest = [f"{n} {_param(v)}" for k, (n, v) in enumerate(zip(param_names, combo)) if k != li]
        if li is None:  # no backend: one panel, a line per combination
            return "", ", ".join(rest) or name.rsplit(".", 1)[-1]
        return ", ".join(rest), _param(combo[li])

    combos = [labels(c) for c in itertools.product(*params)]
    panels = list(dict.fromkeys(p for p, _ in combos))
    values: dict[tuple[str, str], list] = {}
    lines: list[str] = []
    for r in runs:
        line_suffix = f" [{r.env}]" if several_envs else ""
        for (panel, line), v in zip(combos, r.values[name]):
            key = (panel, line + line_suffix)
            if key not in values:
                values[key] = [NOT_RUN] * len(commits)
                if key[1] not in lines:
                    lines.append(key[1])
            values[key][col[r.commit]] = v
    for panel, line in itertools.product(panels, lines):  # every (panel, line): absent ones are all "not run"
        values.setdefault((panel, line), [NOT_RUN] * len(commits))
    panel_params = [n for k, n in enumerate(param_names) if k != li] if li is not None else []
    return Grid(name, bench.get("unit", ""), commits, panel_params, panels, lines, values)


# --------------------------------------------------------------------------- formatting


def _scale(unit: str, values) -> tuple[float, str]:
    """A factor and unit to show values in: seconds as s, ms or us; bytes as MiB."""
    finite = [abs(v) for v in values if not math.isnan(v)]
    top = max(finite, default=1.0)
    if unit == "seconds":
        return next(((f, u) for f, u in ((1, "s"), (1e3, "ms"), (1e6, "µs")) if top * f >= 1), (1e9, "ns"))
    if unit == "bytes":
        return 1 / 2**20, "MiB"
    return 1.0, unit


def _fmt(v, factor: float = 1.0) -> str:
    if v is NOT_RUN:
        return ""
    if v is None:
        return "failed"
    if isinstance(v, float) and math.isnan(v):
        return "skipped"
    return f"{v * factor:.4g}"


def _date(ms: int | None) -> str:
    return "" if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


# --------------------------------------------------------------------------- charts


def _figure(n_panels: int, width: float = 4.2, height: float = 3.0, top: float = 0.9, bottom: float = 0.75):
    """A matplotlib Figure on the Agg canvas, made without pyplot so that no global
    backend or figure registry of the calling process is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    w, h = width * ncols, height * nrows + top
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    # fixed margins in inches (room for the title and legend above, commit labels below):
    # matplotlib's constrained layout would fit them itself, at twice the drawing time
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=dict(
        left=0.65 / w, right=1 - 0.2 / w, top=1 - top / h, bottom=bottom / h, wspace=0.7 / (width - 0.85),
        hspace=(bottom + 0.35) / (height - bottom - 0.35))).ravel()
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, list(axes[:n_panels])


def _log_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _wants_log(unit: str, values: list[float]) -> bool:
    """Times of different backends differ by 10x and more: a log axis keeps each readable."""
    finite = [v for v in values if v > 0 and not math.isnan(v)]
    return unit == "seconds" and len(finite) > 1 and max(finite) / min(finite) > 8


def _save(fig, path: Path) -> tuple[int, int]:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    w, h = fig.canvas.get_width_height()
    return w, h


def plot_history(grid: Grid, title: str, colors: dict[str, str], path: Path) -> tuple[int, int]:
    """A panel per parameter combination, a line per backend, commits along x; gaps
    where a run failed or was skipped. Returns the PNG's size in pixels."""
    fig, axes = _figure(len(grid.panels))
    everything = [x for p in grid.panels for ln in grid.lines for x in grid.series(p, ln)]
    factor, unit = _scale(grid.unit, everything)
    log = _wants_log(grid.unit, everything)
    x = list(range(len(grid.commits)))
    step = max(1, math.ceil(len(x) / MAX_COMMIT_LABELS))
    ticks = x[::step] if x[-1] in x[::step] else x[::step] + [x[-1]]
    handles = {}
    for ax, panel in zip(axes, grid.panels):
        drawn = False
        for line in grid.lines:
            y = [v * factor for v in grid.series(panel, line)]
            if all(math.isnan(v) for v in y):
                continue  # never measured (a skipped backend): listed under the chart instead
            (h,) = ax.plot(x, y, marker="o", markersize=4, linewidth=1.5, label=line, color=colors.get(line))
            handles.setdefault(line, h)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no results", transform=ax.transAxes, ha="center", va="center", color="0.5")
        elif log:
            _log_axis(ax)
        if unit == "x" and drawn:
            ax.axhline(1.0, color="0.6", linestyle=":", linewidth=1)  # level with the reference
        ax.set_title(panel, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xlim(-0.5, len(x) - 0.5)
        ax.set_xticks(ticks, [f"{grid.commits[i][0][:8]}\n{_date(grid.commits[i][1])[:10]}" for i in ticks],
                      fontsize=7, rotation=30, ha="right")
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, alpha=0.3)
    short = grid.name.split(".", 1)[-1]
    fig.suptitle(title if title == short else f"{title} ({short})", fontsize=11, y=1 - 0.12 / fig.get_size_inches()[1])
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="upper center", ncols=min(len(handles), 8),
                   fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1 - 0.4 / fig.get_size_inches()[1]))
    return _save(fig, path)


def plot_latest(grids: list[tuple[Grid, str]], colors: dict[str, str], path: Path) -> tuple[int, int]:
    """Grouped bars, one group per parameter combination and a bar per backend, of each
    grid's latest commit with numbers."""
    fig, axes = _figure(len(grids), width=6.3, height=3.6, top=0.55, bottom=1.0)
    for ax, (grid, title) in zip(axes, grids):
        i = grid.latest()
        lines = [ln for ln in grid.lines if grid.has_numbers(ln)]
        latest = {(p, ln): grid.series(p, ln)[i] for p in grid.panels for ln in lines}
        factor, unit = _scale(grid.unit, list(latest.values()))
        width = 0.8 / max(1, len(lines))
        for k, line in enumerate(lines):
            xs = [j + (k - (len(lines) - 1) / 2) * width for j in range(len(grid.panels))]
            ax.bar(xs, [latest[p, line] * factor for p in grid.panels], width, label=line, color=colors.get(line))
        if _wants_log(grid.unit, list(latest.values())):
            _log_axis(ax)
        if unit == "x":
            ax.axhline(1.0, color="0.6", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(grid.panels)), grid.panels, fontsize=7, rotation=20, ha="right")
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(f"{title}\nat {grid.commits[i][0][:8]} ({_date(grid.commits[i][1])[:10]})", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)


# --------------------------------------------------------------------------- the page

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1320px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
td.na { color: #999; } code { font-size: 0.95em; }
figure { margin: 0.6em 0; } figure img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: 0.9em; }
"""


class _Page:
    def __init__(self, out: Path):
        self.out = out
        self.parts: list[str] = []
        self.images: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def png(self, stem: str) -> Path:
        name = _slug(stem) + ".png"
        while name in self.images:  # two names that slug alike
            name = name[:-4] + "_.png"
        self.images.append(name)
        return self.out / name

    def figure(self, path: Path, size: tuple[int, int], alt: str, caption: str = "") -> None:
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        # A PNG file next to index.html, by relative path (not a data: URI): the page stays
        # small, each chart can be linked or attached on its own, and the folder can be
        # moved or served anywhere as it is.
        self.add(f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(alt)}" width="{size[0]}" '
                 f'height="{size[1]}">{cap}</figure>')


def _e(text) -> str:
    return html.escape(str(text))


def _table(header: list[str], rows: list[list[str]], na_cells=("failed", "skipped", ""), left: int = 1) -> str:
    """An HTML table; the first ``left`` columns left-aligned (labels), the rest right (numbers)."""
    def cls(k: int, c: str = "") -> str:
        return "l" if k < left else ("na" if c in na_cells else "")

    head = "".join(f'<th class="{cls(k)}">{_e(h)}</th>' for k, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{cls(k, c)}">{_e(c)}</td>' for k, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _machine_info(m: Machine) -> str:
    info = dict(m.info)
    ram = info.get("ram")
    if isinstance(ram, str) and ram.isdigit():  # asv records bytes
        info["ram"] = f"{int(ram) / 2**30:.1f} GiB"
    rows = [[k, str(v)] for k, v in info.items()]
    rows.append(["environments", ", ".join(m.envs)])
    if m.python:
        rows.append(["python", ", ".join(m.python)])
    return _table(["machine.json", ""], rows, na_cells=(), left=2)


def _commits_table(m: Machine) -> str:
    by_commit: dict[str, list[Run]] = {}
    for r in sorted(m.runs, key=_by_date):
        by_commit.setdefault(r.commit, []).append(r)
    rows = []
    for k, (commit, runs) in enumerate(by_commit.items(), 1):
        vals = [v for r in runs for vs in r.values.values() for v in vs]
        failed = sum(v is None for v in vals)
        skipped = sum(isinstance(v, float) and math.isnan(v) for v in vals)
        rows.append([str(k), commit[:8], _date(runs[0].date), ", ".join(r.env for r in runs),
                     str(len(vals) - failed - skipped), str(failed), str(skipped)])
    return _table(["#", "commit", "date (UTC)", "environment", "values", "failed", "skipped"], rows, na_cells=())


def _latest_table(grid: Grid) -> str:
    i = grid.latest()
    if i is None:
        return '<p class="note">No numbers: every run of it failed or was skipped.</p>'
    latest = {k: v[i] for k, v in grid.values.items()}
    factor, unit = _scale(grid.unit, [v if _number(v) else math.nan for v in latest.values()])
    first = ", ".join(grid.panel_params) or "benchmark"
    rows = [[p or "-", *(_fmt(latest[p, ln], factor) for ln in grid.lines)] for p in grid.panels]
    return (f'<p class="note">At the latest commit with numbers, {_e(grid.commits[i][0][:8])} '
            f'({_e(_date(grid.commits[i][1]))}), in {_e(unit or "units of the benchmark")}:</p>'
            + _table([first, *grid.lines], rows))


#: units in which a smaller value is better, and those in which a larger one is (the others: up or down)
LOWER_IS_BETTER = ("seconds", "bytes", "GFLOP", "x reference")
HIGHER_IS_BETTER = ("x", "GFLOP/s", "%")


def _direction(unit: str, ratio: float) -> str:
    if unit in LOWER_IS_BETTER + HIGHER_IS_BETTER:
        return "worse" if (ratio > 1) == (unit in LOWER_IS_BETTER) else "better"
    return "up" if ratio > 1 else "down"


def _steps_table(grid: Grid) -> str:
    """Each line's changes of level over the commits, by asv's step detection (as asv's site
    finds its regressions), with the commit each started at."""
    from lstmbench.bench.regressions import detected_steps

    rows = []
    for (panel, line) in grid.values:
        for step in detected_steps(grid.series(panel, line)):
            commit, date = grid.commits[step.start]
            rows.append([line, panel or "-", commit[:8], _date(date), _fmt(step.before), _fmt(step.after),
                         f"{step.ratio:.3g}", _direction(grid.unit, step.ratio)])
    if not rows:
        return '<p class="note">asv\'s step detection finds no step in any line.</p>'
    return ('<p class="note">Steps found by asv\'s step detection (<code>asv.step_detect</code>): the commit '
            'each new level starts at, the levels before and after, their ratio.</p>'
            + _table(["line", "panel", "from commit", "date (UTC)", "before", "after", "ratio", ""], rows, left=4))


def _section(page: _Page, grid: Grid, title: str, m: Machine, colors: dict[str, str]) -> None:
    page.add(f'<h3>{_e(title)}</h3><p class="note"><code>{_e(grid.name)}</code>, unit {_e(grid.unit or "-")}, '
             f'{len(grid.commits)} commit(s)</p>')
    path = page.png(f"{m.name}-{grid.name.split('.', 1)[-1]}")
    size = plot_history(grid, title, colors, path)
    missing = [ln for ln in grid.lines if not grid.has_numbers(ln)]
    caption = "Gaps: a run that failed or was skipped."
    if missing:
        caption += f" Never measured here (failed or skipped in every run): {', '.join(missing)}."
    page.figure(path, size, f"{title} over commits on {m.name}", _e(caption))
    page.add(_latest_table(grid))
    page.add(_steps_table(grid))


def build_page(benchmarks: dict, machines: list[Machine], out: Path, source: Path) -> _Page:
    page = _Page(out)
    backends = sorted({_param(v) for b in benchmarks.values()
                       for n, vs in zip(b["param_names"], b["params"]) if n == LINE_PARAM for v in vs})
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    colors = {b: palette[k % len(palette)] for k, b in enumerate(backends)}  # one colour per backend everywhere
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page.add(f"<h1>lstmbench: benchmark history</h1><p class=\"note\">From the asv results in "
             f"<code>{_e(source)}</code>, written by <code>lstmbench report</code> on {generated}. "
             "A static page: it needs no network (asv's own site, <code>asv publish</code>, loads its "
             "scripts from CDNs).</p>")
    others = [n for n in sorted(benchmarks) if n not in HEADLINE]
    for m in machines:
        page.add(f"<h2>Machine {_e(m.name)}</h2>")
        page.add(_machine_info(m))
        notes = []
        if m.stale:
            notes.append(f"{m.stale} result(s) recorded by an older version of a benchmark's code are left out, "
                         "as on asv's site.")
        notes += [f"Unreadable result file {u}" for u in m.unreadable]
        page.add("".join(f'<p class="note">{_e(n)}</p>' for n in notes))
        page.add(f"<h3>Commits ({len({r.commit for r in m.runs})})</h3>" + _commits_table(m))
        grids = {}
        for name, title in HEADLINE.items():
            grid = arrange(benchmarks[name], m) if name in benchmarks else None
            if grid is None:
                why = "" if name in benchmarks else " (benchmarks.json does not list it)"
                page.add(f'<h3>{_e(title)}</h3><p class="note">No results for <code>{_e(name)}</code> '
                         f"on this machine{why}.</p>")
                continue
            grids[name] = grid
            _section(page, grid, title, m, colors)
        latest = [(grids[n], HEADLINE[n]) for n in LATEST_GRID if n in grids and grids[n].latest() is not None]
        if latest:
            page.add("<h3>Latest grid</h3>")
            path = page.png(f"{m.name}-latest-grid")
            page.figure(path, plot_latest(latest, colors, path), f"latest grid on {m.name}",
                        "Each benchmark at its latest commit with numbers; the tables above give the values.")
        shown = [(n, g) for n in others if (g := arrange(benchmarks[n], m)) is not None]
        if shown:
            page.add("<h2 style=\"font-size:1.2em\">Other benchmarks on " + _e(m.name) + "</h2>")
        for name, grid in shown:
            _section(page, grid, name.split(".", 1)[-1], m, colors)
    return page


def write_report(results_dir: str | Path, out: str | Path = ".asv/report", machine: str | None = None) -> Path:
    """Write ``out``/index.html and its PNG charts from the asv results in
    ``results_dir``; returns the page's absolute path."""
    benchmarks, machines = load_results(results_dir, machine)
    out = check_output_dir(out, what="--out")
    for m in machines:
        for u in m.unreadable:
            print(f"warning: skipped unreadable result file {u}", file=sys.stderr)
    page = build_page(benchmarks, machines, out, Path(results_dir))  # writes the charts
    text = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>lstmbench benchmark history</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(page.parts) + "\n</body></html>\n")
    index = out / "index.html"
    atomic_write(index, lambda f: f.write(text.encode("utf-8")))  # a browser never sees half a page
    return index.resolve()
