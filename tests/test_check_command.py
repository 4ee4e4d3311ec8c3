"""`lstmbench check`: the conformance kit from the command line, and the worst-error
recording behind its "worst ... of tolerance" column.

The backends are real: the example plugin (docs/examples/lstmbench-example, its own
NumPy LSTM, loaded from the source tree under another module name) and its broken copy
(docs/examples/make_broken_copy.py: one gradient sign flipped), registered at run time,
which an in-process `lstmbench check` sees. Installing them is tests/test_plugin.py's job.
"""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

import lstmbench
from lstmbench import cli
from lstmbench.testing import CHECKS, CheckResult, assert_close, check_backend, check_one, record_errors
from lstmbench_backends.reference import NumpyReference

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
WORST = re.compile(r"worst (\S+) of tolerance \((.+)\)$")


def _load_package(name: str, directory: Path):
    """Import the package in ``directory`` as ``name`` (its relative imports follow)."""
    spec = importlib.util.spec_from_file_location(name, directory / "__init__.py",
                                                  submodule_search_locations=[str(directory)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_backends(tmp_path_factory, broken_copy_maker):
    """``example`` and ``example-broken``, registered for this module."""
    broken_dir = broken_copy_maker.make_broken_copy(tmp_path_factory.mktemp("broken") / "lstmbench-example-broken")
    packages = {"lstmbench_example_from_docs": EXAMPLES / "lstmbench-example" / "lstmbench_example",
                "lstmbench_example_broken_from_docs": broken_dir / "lstmbench_example_broken"}
    good, broken = (_load_package(name, path).ExampleBackend() for name, path in packages.items())
    assert (good.name, broken.name) == ("example", "example-broken")
    for backend in (good, broken):
        lstmbench.register_backend(backend)
    try:
        yield good, broken
    finally:
        for backend in (good, broken):
            lstmbench.unregister_backend(backend.name)
        for name in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[name]


def run_cli(capsys, *argv):
    code = cli.main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def result_lines(out: str) -> dict[tuple[str, str], str]:
    """{(check, dtype): the rest of its line} of every PASS/FAIL/SKIP line."""
    lines = {}
    for line in out.splitlines():
        m = re.match(r"(PASS|FAIL|SKIP)  (\S+) +(float32|float64)  (.*)$", line)
        if m:
            lines[m[2], m[3]] = (m[1], m[4])
    return lines


def worst_of(rest: str) -> tuple[float, str]:
    m = WORST.search(rest)
    assert m, f"no worst-error column in {rest!r}"
    return float(m[1]), m[2]


# -- the recorder -------------------------------------------------------------------


def test_recorder_keeps_the_worst_ratio_and_where():
    expected = np.array([[1.0, -2.0], [4.0, 0.0]])
    tol = 1e-10 * (np.abs(expected) + 4.0)  # float64: rtol*|e| + atol*max|e|
    actual = expected + np.array([[0.25, 0.0], [0.0, 0.5]]) * tol
    with record_errors() as outer:
        with record_errors() as inner:
            assert_close("a", actual, expected, "float64")
        assert_close("b", expected, expected, "float64")  # exact: ratio 0
    assert inner.comparisons == 1 and outer.comparisons == 2  # nested recorders both see it
    for rec in (inner, outer):
        assert rec.worst.what == "a" and rec.worst.index == (1, 1)
        assert rec.worst.ratio == pytest.approx(0.5, rel=1e-3)


def test_recorder_sees_failures_and_nan():
    with record_errors() as rec:
        with pytest.raises(AssertionError):
            assert_close("off by 3x", np.array([1.0 + 3e-10]), np.array([1.0]), "float64")
    assert rec.worst.ratio == pytest.approx(1.5, rel=1e-3)  # 3e-10 of 2e-10 allowed
    with record_errors() as rec:
        with pytest.raises(AssertionError):
            assert_close("nan", np.array([np.nan, 1.0]), np.array([1.0, 1.0]), "float64")
    assert rec.worst.ratio == np.inf and rec.worst.index == (0,)


def test_nothing_recorded_outside_a_recorder():
    with record_errors() as rec:
        pass
    assert_close("outside", np.ones(2), np.ones(2), "float64")
    assert rec.worst is None and rec.comparisons == 0


def test_check_results_carry_the_worst_error(example_backends):
    good, broken = example_backends
    passed = check_one(good, "loss_and_grads", "float32", max_examples=3, seed=0)
    assert passed.status == "passed" and 0 < passed.worst.ratio < 1  # float32: some rounding, within tolerance
    failed = check_one(broken, "loss_and_grads", "float64", max_examples=3, seed=0)
    assert failed.status == "failed" and failed.worst.ratio > 1
    assert failed.worst.what == "gradient of l0.W_x"
    assert check_one(good, "bad_inputs", "float64", max_examples=3, seed=0).worst is None  # no tolerance comparison
    # the fields are new and optional: results built the old way still work
    assert CheckResult("b", "forward", "float64", "passed").worst is None


def test_a_crash_is_a_failed_check_not_an_exception():
    class Crashes(NumpyReference):
        name = "crashes"

        def _forward(self, cfg, params, x):
            raise RuntimeError("kernel exploded")

    result = check_one(Crashes(), "forward", "float64", max_examples=2, seed=0)
    assert result.status == "failed" and result.detail == "raised RuntimeError: kernel exploded"
    with pytest.raises(KeyError, match="unknown check"):  # the caller's mistake still raises
        check_backend(Crashes(), checks=["nope"])


# -- the command --------------------------------------------------------------------


def test_quick_passes_on_the_example(example_backends, capsys):
    code, out, _ = run_cli(capsys, "example", "--quick", "--seed", "1")
    assert code == 0, out
    assert "3 examples per check (--quick), seed 1" in out.splitlines()[0]
    lines = result_lines(out)
    assert set(lines) == {(c, d) for c in CHECKS for d in ("float64", "float32")}
    ratios = []
    for (check, dtype), (status, rest) in lines.items():
        if check == "declared_unsupported":  # the example declares everything supported
            assert status == "SKIP" and "declares every configuration supported" in rest
        elif check == "sequences":  # nor lengths and states (yet)
            assert status == "SKIP" and "does not take lengths or an initial state yet" in rest
        elif check == "dropout":
            assert status == "SKIP" and "does not train with dropout yet" in rest
        elif check in ("bad_inputs", "deterministic", "thread_independent"):  # exact, or no comparison
            assert (status, rest) == ("PASS", "-")
        else:
            assert status == "PASS"
            ratios.append(worst_of(rest)[0])
    assert all(r < 1 for r in ratios)
    assert max(ratios) > 0  # its own math: not bit-identical to the reference, so the column means something
    assert re.fullmatch(r"example: 14 passed, 0 failed, 6 skipped in [\d.]+ s", out.splitlines()[-1])


def test_fails_on_the_broken_copy(example_backends, capsys):
    code, out, err = run_cli(capsys, "example-broken", "--quick", "--seed", "1", "--checks", "forward",
                             "loss_and_grads")
    assert code == 1
    lines = result_lines(out)
    for dtype in ("float64", "float32"):
        assert lines["forward", dtype][0] == "PASS" and worst_of(lines["forward", dtype][1])[0] < 1
        status, rest = lines["loss_and_grads", dtype]
        ratio, where = worst_of(rest)
        assert status == "FAIL" and ratio > 1 and where == "gradient of l0.W_x"
    # the first line of the failure message, under the FAIL line
    printed = out.splitlines()
    message = printed[next(i for i, line in enumerate(printed) if line.startswith("FAIL")) + 1]
    assert message.startswith("      gradient of l0.W_x: ") and "entries differ from the reference" in message
    assert "2 passed, 2 failed, 0 skipped" in out
    assert "--seed 1" in err


def test_json_report(example_backends, capsys):
    code, out, _ = run_cli(capsys, "example-broken", "--quick", "--seed", "3", "--checks", "loss_and_grads",
                           "bad_inputs", "--dtype", "float64", "--json")
    assert code == 1
    report = json.loads(out)
    assert (report["seed"], report["examples"]) == (3, 3)
    assert report["summary"] == {"passed": 1, "failed": 1, "skipped": 0}
    by_check = {r["check"]: r for r in report["results"]}
    assert by_check["loss_and_grads"]["status"] == "failed" and by_check["loss_and_grads"]["worst"]["ratio"] > 1
    assert by_check["bad_inputs"]["status"] == "passed" and by_check["bad_inputs"]["worst"] is None


def test_same_seed_same_examples(example_backends, capsys):
    def worst_values(seed):
        code, out, _ = run_cli(capsys, "example", "--quick", "--seed", seed, "--checks", "forward", "loss_and_grads",
                               "--dtype", "float32", "--json")
        assert code == 0
        return [(r["check"], r["worst"]) for r in json.loads(out)["results"]]

    # float32 worst errors differ from one set of examples to the next: they identify the examples
    assert worst_values("7") == worst_values("7")


def test_quick_draws_three_examples(capsys):
    class Counting(NumpyReference):
        name = "counting"
        calls = 0

        def _forward(self, cfg, params, x):
            Counting.calls += 1
            return super()._forward(cfg, params, x)

    lstmbench.register_backend(Counting())
    try:
        code, out, _ = run_cli(capsys, "counting", "--quick", "--checks", "forward", "--dtype", "float64")
    finally:
        lstmbench.unregister_backend("counting")
    assert code == 0, out
    assert Counting.calls == 3  # check_forward calls forward once per example


def test_default_count_is_the_hypothesis_profiles(capsys):
    code, out, _ = run_cli(capsys, "numpy", "--checks", "bad_inputs", "--dtype", "float64")
    assert code == 0
    assert f"{settings().max_examples} examples per check (the Hypothesis profile's max_examples)" in out


def test_unknown_backend_lists_the_known_ones(capsys):
    code, out, err = run_cli(capsys, "nope", "--quick")
    assert code == 2 and out == ""
    assert err.startswith("error: unknown backend 'nope'; registered backends: ") and "numpy" in err


def test_unavailable_backend_says_why(capsys):
    class NeedsHardware(NumpyReference):
        name = "needs-hardware"

        def availability(self):
            return False, "no flux capacitor found; install one"

    lstmbench.register_backend(NeedsHardware())
    try:
        code, out, err = run_cli(capsys, "numpy", "needs-hardware", "--quick")
    finally:
        lstmbench.unregister_backend("needs-hardware")
    assert code == 2 and out == ""  # nothing ran: every name is resolved first
    assert "needs-hardware' is not available: no flux capacitor found; install one" in err


def test_unknown_check(capsys):
    code, _, err = run_cli(capsys, "numpy", "--checks", "forward", "nope")
    assert code == 2 and "unknown check(s) nope; checks: forward, loss_and_grads" in err


def test_hypothesis_missing(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # import hypothesis -> ImportError
    code, _, err = run_cli(capsys, "numpy", "--quick")
    assert code == 2 and "needs Hypothesis" in err and "pip install 'hypothesis>=6.100'" in err


def test_cli_start_up_does_not_import_hypothesis():
    code = "import sys; from lstmbench import cli; cli.build_parser(); print('hypothesis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
