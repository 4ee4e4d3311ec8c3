"""Backends shipped by another distribution, found through the entry point.

The example plugin, docs/examples/lstmbench-example (``example`` and ``example-fused``:
an LSTM in plain NumPy), and its deliberately broken copy (docs/examples/make_broken_copy.py:
``example-broken``, with the gradient of W_x of the wrong sign) are pip-installed into this
interpreter's environment from temporary copies for the duration of this module, as a
user installs a third-party backend package, and uninstalled afterwards. The kit must
pass the example and catch the broken copy.
"""

import importlib
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import Phase, settings

import lstmbench
from lstmbench import cli, registry
from lstmbench.errors import ConfigError, LstmbenchError
from lstmbench.testing import CHECKS, check_backend, conformance_params, run_conformance_case
from lstmbench_backends.reference import NumpyReference

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "docs" / "examples"
EXAMPLE_SRC = EXAMPLES / "lstmbench-example"
GUIDE = REPO / "docs" / "adding-a-backend.md"
DISTS = ("lstmbench-example", "lstmbench-example-broken")
MODULES = ("lstmbench_example", "lstmbench_example_broken")
GOOD, FUSED, BROKEN = "example", "example-fused", "example-broken"
PLUGIN_NAMES = (GOOD, FUSED, BROKEN)


def _forget_plugin() -> None:
    """Drop every trace of the plugin from this process (registry caches, modules)."""
    for name in PLUGIN_NAMES:
        lstmbench.unregister_backend(name)
    for mod in [m for m in sys.modules if m.split(".")[0] in MODULES]:
        del sys.modules[mod]
    importlib.invalidate_caches()


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _can_build_without_isolation() -> bool:
    """setuptools>=61 is here, and it can make wheels (itself from 70.1 on, else with ``wheel``).
    A fresh Python 3.11 venv has setuptools 65 and no ``wheel``."""
    try:
        version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    if version < (61, 0):
        return False
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"], check=True)


def _build_leftovers(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.name == "build" or p.name.endswith(".egg-info")}


@pytest.fixture(scope="module")
def plugin_installed(tmp_path_factory, broken_copy_maker):
    present = [d for d in DISTS if _installed(d)]
    if present:  # installing over it and uninstalling afterwards would remove the user's own install
        pytest.skip(f"{', '.join(present)} is already installed here; pip uninstall it to run these tests")
    # setuptools writes build/ and *.egg-info beside pyproject.toml: build copies,
    # so the repository stays clean.
    leftovers_before = _build_leftovers(EXAMPLE_SRC)
    root = tmp_path_factory.mktemp("plugin-src")
    helper = broken_copy_maker
    good = root / "lstmbench-example"
    shutil.copytree(EXAMPLE_SRC, good, ignore=helper.LEFTOVERS)
    broken = helper.make_broken_copy(root / "lstmbench-example-broken")
    _forget_plugin()
    # Build with this environment's setuptools (no network) when it can; otherwise
    # let pip fetch a build backend into an isolated build environment.
    isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []
    _pip("install", "--no-deps", *isolation, str(good), str(broken))
    importlib.invalidate_caches()
    try:
        yield SimpleNamespace(good=good, broken=broken, leftovers_before=leftovers_before)
    finally:
        _forget_plugin()
        _pip("uninstall", "-y", *DISTS)
        importlib.invalidate_caches()


@pytest.fixture
def no_shrinking():
    """A planted bug fails at once; shrinking it to a minimal example only costs time."""
    previous = settings.default
    settings.register_profile("lstmbench-test-no-shrink", parent=previous,
                              phases=[Phase.explicit, Phase.reuse, Phase.generate])
    settings.load_profile("lstmbench-test-no-shrink")
    try:
        yield
    finally:
        settings.register_profile("lstmbench-test-restore", parent=previous)
        settings.load_profile("lstmbench-test-restore")


def test_plugin_source_is_clean(plugin_installed):
    """The install builds from a copy: no build artifacts land in the repository."""
    assert _build_leftovers(EXAMPLE_SRC) == plugin_installed.leftovers_before


def test_discovered_through_entry_point(plugin_installed):
    names = lstmbench.backend_names()
    assert "numpy" in names
    assert set(PLUGIN_NAMES) <= set(names)
    # found through the entry-point group, not registered at run time
    assert not set(PLUGIN_NAMES) & set(registry._extra)
    infos = {info.name: info for info in lstmbench.list_backends()}
    for name in PLUGIN_NAMES:
        assert infos[name].available, infos[name].reason
        assert infos[name].reason == ""
        assert infos[name].dtypes == ("float32", "float64")
    assert infos[GOOD].description.startswith("example plugin")
    assert infos[FUSED].description.startswith("example plugin")
    assert infos[BROKEN].description.startswith("a broken copy of the example plugin")


def test_loaded_from_the_plugin_package(plugin_installed):
    good, fused, broken = (lstmbench.get_backend(name) for name in PLUGIN_NAMES)
    assert all(isinstance(b, lstmbench.Backend) for b in (good, fused, broken))
    assert type(good).__module__ == "lstmbench_example"
    assert type(fused).__module__ == "lstmbench_example.fused"
    assert type(broken).__module__ == "lstmbench_example_broken"
    assert (good.name, fused.name, broken.name) == PLUGIN_NAMES
    assert lstmbench.get_backend(GOOD) is good  # one instance per name
    # imported from site-packages, not from the source tree or the copies
    for module in MODULES:
        where = Path(sys.modules[module].__file__).resolve().parents
        assert EXAMPLES.resolve() not in where
        assert plugin_installed.good.resolve() not in where and plugin_installed.broken.resolve() not in where


@pytest.mark.parametrize("name", [GOOD, FUSED])
def test_example_passes_conformance(plugin_installed, name):
    results = check_backend(name, max_examples=10)
    assert {(r.check, r.dtype) for r in results} == {(c, d) for c in CHECKS for d in ("float64", "float32")}
    assert all(r.backend == name for r in results)
    assert all(r.status in ("passed", "skipped") for r in results), [r for r in results if r.status == "failed"]
    passed = {(r.check, r.dtype) for r in results if r.status == "passed"}
    for check in ("forward", "loss_and_grads", "training_steps", "gradient_hook", "bad_inputs"):
        assert (check, "float64") in passed and (check, "float32") in passed
    assert all(r.worst.ratio <= 1 for r in results if r.worst is not None)


def test_broken_copy_is_caught(plugin_installed, no_shrinking):
    checks = ["forward", "loss_and_grads", "training_steps"]
    results = check_backend(BROKEN, checks=checks, max_examples=10, raise_on_failure=False)
    status = {(r.check, r.dtype): r for r in results}
    assert set(status) == {(c, d) for c in checks for d in ("float64", "float32")}
    for dtype in ("float64", "float32"):
        assert status["forward", dtype].status == "passed", status["forward", dtype].detail
        for check in ("loss_and_grads", "training_steps"):
            assert status[check, dtype].status == "failed"
        # the report points at the planted bug
        assert "l0.W_x" in status["loss_and_grads", dtype].detail
        assert status["loss_and_grads", dtype].worst.what == "gradient of l0.W_x"


def test_broken_copy_raises_by_default(plugin_installed, no_shrinking):
    with pytest.raises(AssertionError) as info:
        check_backend(BROKEN, checks=["loss_and_grads"], dtypes=("float64",), max_examples=10)
    message = str(info.value)
    assert "1 conformance check(s) failed" in message
    assert BROKEN in message and "loss_and_grads" in message


def test_conformance_params_shape():
    """conformance_params needs no installed backend when names are given."""
    params = conformance_params(["x"])
    assert [p.id for p in params] == [f"x-{c}-{d}" for c in CHECKS for d in ("float64", "float32")]
    assert [tuple(p.values) for p in params] == [("x", c, d) for c in CHECKS for d in ("float64", "float32")]
    few = conformance_params(["x", "y"], checks=["forward"], dtypes=("float32",))
    assert [p.id for p in few] == ["x-forward-float32", "y-forward-float32"]


# What a plugin author writes: names given explicitly, so collection does not
# need the plugin installed yet; the fixture installs it before the case runs.
@pytest.mark.parametrize("backend,check,dtype", conformance_params([GOOD], checks=["forward", "loss_and_grads"]))
def test_plugin_conformance_cases(plugin_installed, backend, check, dtype):
    run_conformance_case(backend, check, dtype)


def test_conformance_case_fails_for_broken(plugin_installed, no_shrinking):
    with pytest.raises(AssertionError, match="l0.W_x"):
        run_conformance_case(BROKEN, "loss_and_grads", "float64")


def test_the_examples_own_tests_pass(plugin_installed):
    """docs/examples/lstmbench-example/tests, run as its author runs them."""
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         cwd=plugin_installed.good, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    counts = re.search(r"(\d+) passed, (\d+) skipped", run.stdout)
    # 2 backends x every check x 2 dtypes; declared_unsupported skips (everything is supported),
    # and so do sequences (no lengths or states yet) and dropout (none yet)
    assert counts and (int(counts[1]), int(counts[2])) == (2 * 2 * (len(CHECKS) - 3), 2 * 2 * 3), run.stdout


def test_guide_quotes_the_example_files():
    """docs/adding-a-backend.md shows the example's code: every block it introduces with a
    link to a file under examples/ must appear in that file, verbatim."""
    quotes = re.findall(r"\]\((examples/[^)\s]+)\):?\n+```[a-z]*\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(quotes) >= 4, "the guide no longer quotes the example's files"
    for path, block in quotes:
        text = (GUIDE.parent / path).read_text()
        assert block in text, f"the guide's block from {path} is not in that file:\n{block}"


# -- name clashes and broken plugins ------------------------------------------------------
# Throwaway distributions written into a temporary folder on sys.path, as pip leaves one in
# site-packages (a .dist-info with METADATA and entry_points.txt, beside its module): found
# through the entry-point group like an installed plugin, in this process only.

BAD = "lstmbench-test-bad"
BROKEN_PLUGINS = {  # how the plugin fails: (its module, what the error says after "failed to load: ")
    "import": ("import lstmbench_test_missing_dep\n",
               "ModuleNotFoundError: No module named 'lstmbench_test_missing_dep'"),
    "syntax": ("class Backend(:\n", "SyntaxError: "),
    "construction": ("from lstmbench_backends.reference import NumpyReference\n\n"
                     "class Backend(NumpyReference):\n"
                     "    name = 'bad'\n\n"
                     "    def __init__(self):\n"
                     "        raise RuntimeError('no licence key found')\n",
                     "RuntimeError: no licence key found"),
    "not-a-backend": ("def Backend():\n    return 42\n", "the entry point gave int, not an lstmbench.Backend"),
}


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """``add(dist, {backend name: module:attr}, {module: source})`` writes a distribution;
    the registry starts without cached backends and is restored afterwards."""
    modules = []
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_instances", {})

    def add(dist, entry_points, sources):
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = [f"{name} = {value}" for name, value in entry_points.items()]
        (info / "entry_points.txt").write_text("\n".join([f"[{registry.ENTRY_POINT_GROUP}]", *lines, ""]))
        for module, source in sources.items():
            (tmp_path / f"{module}.py").write_text(source)
        modules.extend(sources)
        importlib.invalidate_caches()

    yield add
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


IMPOSTOR = ("from lstmbench_backends.reference import NumpyReference\n\n"
            "class Impostor(NumpyReference):\n"
            "    description = 'not the reference'\n")


def test_a_plugin_cannot_take_a_built_in_name(fake_plugins, capsys):
    fake_plugins("lstmbench-test-impostor", {"numpy": "lstmbench_test_impostor:Impostor"},
                 {"lstmbench_test_impostor": IMPOSTOR})
    assert type(lstmbench.load_backend("numpy")) is type(lstmbench.get_backend("numpy")) is NumpyReference
    assert "lstmbench_test_impostor" not in sys.modules  # never imported
    assert lstmbench.backend_names().count("numpy") == 1
    code, out, _ = _cli(capsys, "backends")
    assert code == 0
    refused = [line for line in out.splitlines() if "lstmbench-test-impostor" in line]
    assert len(refused) == 1
    assert refused[0].startswith("numpy (plugin from lstmbench-test-impostor 0.1: refused)  no")
    assert ("refused: the plugin lstmbench-test-impostor 0.1 (lstmbench_test_impostor:Impostor) registers the "
            "built-in backend name 'numpy'; it must pick another name" in refused[0])
    built_in = [line for line in out.splitlines() if re.match(r"numpy +yes ", line)]
    assert len(built_in) == 1 and "NumPy reference" in built_in[0]


def test_two_plugins_of_one_name_are_an_error_naming_both(fake_plugins, capsys):
    twin = ("from lstmbench_backends.reference import NumpyReference\n\n"
            "class Twin(NumpyReference):\n"
            "    name = 'twin'\n")
    for side in ("a", "b"):
        fake_plugins(f"lstmbench-test-twin-{side}", {"twin": f"lstmbench_test_twin_{side}:Twin"},
                     {f"lstmbench_test_twin_{side}": twin})
    with pytest.raises(LstmbenchError) as info:
        lstmbench.get_backend("twin")
    message = str(info.value)
    assert ("backend name 'twin' is registered by 2 plugins: lstmbench-test-twin-a 0.1 "
            "(lstmbench_test_twin_a:Twin) and lstmbench-test-twin-b 0.1 (lstmbench_test_twin_b:Twin)" in message)
    assert "uninstall" in message
    code, out, err = _cli(capsys, "check", "twin", "--quick")
    assert (code, out, err) == (2, "", f"error: {message}\n")
    infos = {i.name: i for i in lstmbench.list_backends()}
    assert not infos["twin"].available and infos["twin"].reason == message


def test_register_backend_keeps_built_in_names_unless_told():
    class Impostor(NumpyReference):
        description = "not the reference"

    reference = lstmbench.get_backend("numpy")
    try:
        with pytest.raises(ConfigError, match=r"'numpy' is the name of a built-in backend.*replace=True"):
            lstmbench.register_backend(Impostor())
        assert lstmbench.get_backend("numpy") is reference
        impostor = Impostor()
        lstmbench.register_backend(impostor, replace=True)  # the explicit choice
        assert lstmbench.get_backend("numpy") is impostor
    finally:
        lstmbench.unregister_backend("numpy")
    assert type(lstmbench.get_backend("numpy")) is NumpyReference


@pytest.fixture(scope="module")
def series_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "--dataset", "nile", "--window", "5", "--hidden", "4", "--epochs", "1",
                     "--backend", "numpy", "--out", str(out), "--quiet"]) == 0
    return out / "best.npz"


@pytest.mark.parametrize("how", BROKEN_PLUGINS)
def test_a_plugin_that_fails_to_load_is_a_one_line_error(fake_plugins, capsys, tmp_path, series_checkpoint, how):
    source, says = BROKEN_PLUGINS[how]
    fake_plugins(BAD, {"bad": "lstmbench_test_bad:Backend"}, {"lstmbench_test_bad": source})
    capsys.readouterr()  # the checkpoint's training
    commands = {"check": ["check", "bad", "--quick"],
                "train": ["train", "--dataset", "nile", "--backend", "bad", "--out", str(tmp_path / "run")],
                "predict": ["predict", str(series_checkpoint), "--backend", "bad"]}
    for command, argv in commands.items():
        code, out, err = _cli(capsys, *argv)
        assert (code, out) == (2, ""), command
        assert err.count("\n") == 1, err
        assert err.startswith(f"error: backend 'bad' (entry point lstmbench_test_bad:Backend from {BAD} 0.1) "
                              f"failed to load: {says}"), err
        assert f"a fault of the plugin {BAD} or of what it imports, not of lstmbench" in err
    assert not (tmp_path / "run").exists()
    info = {i.name: i for i in lstmbench.list_backends()}["bad"]  # still listed, as unavailable
    assert not info.available and info.reason == err.removeprefix("error: ").strip()
