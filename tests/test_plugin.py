"""A backend shipped by another distribution, found through the entry point.

tests/plugin/ is a tiny package, ``lstmbench-testplugin``, that registers two
backends in the ``lstmbench.backends`` group exactly as a third-party plugin
would: ``testplugin-good`` (the reference math) and ``testplugin-flipped`` (one
gradient with the wrong sign). It is pip-installed into this interpreter's
environment for the duration of this module and uninstalled afterwards.
"""

import importlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import Phase, settings

import lstmbench
from lstmbench import registry
from lstmbench.testing import CHECKS, check_backend, conformance_params, run_conformance_case

PLUGIN_SRC = Path(__file__).parent / "plugin"
DIST = "lstmbench-testplugin"
GOOD, FLIPPED = "testplugin-good", "testplugin-flipped"
PLUGIN_NAMES = (GOOD, FLIPPED)


def _forget_plugin() -> None:
    """Drop every trace of the plugin from this process (registry caches, modules)."""
    for name in PLUGIN_NAMES:
        lstmbench.unregister_backend(name)
    for mod in [m for m in sys.modules if m == "lstmbench_testplugin" or m.startswith("lstmbench_testplugin.")]:
        del sys.modules[mod]
    importlib.invalidate_caches()


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


@pytest.fixture(scope="module")
def plugin_installed(tmp_path_factory):
    # setuptools writes build/ and *.egg-info beside pyproject.toml: build a copy,
    # so the repository stays clean.
    src = tmp_path_factory.mktemp("plugin-src") / "lstmbench-testplugin"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _forget_plugin()
    # Build with this environment's setuptools (no network) when it can; otherwise
    # let pip fetch a build backend into an isolated build environment.
    isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []
    _pip("install", "--no-deps", *isolation, str(src))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        _forget_plugin()
        _pip("uninstall", "-y", DIST)
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


def test_plugin_source_is_clean():
    """The install builds from a copy: no build artifacts ever land in the repository."""
    leftovers = [p.name for p in PLUGIN_SRC.iterdir() if p.name == "build" or p.name.endswith(".egg-info")]
    assert leftovers == []


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
        assert infos[name].description.startswith("test plugin")


def test_loaded_from_the_plugin_package(plugin_installed):
    good = lstmbench.get_backend(GOOD)
    flipped = lstmbench.get_backend(FLIPPED)
    assert isinstance(good, lstmbench.Backend) and isinstance(flipped, lstmbench.Backend)
    assert type(good).__module__ == "lstmbench_testplugin"
    assert (good.name, flipped.name) == (GOOD, FLIPPED)
    assert lstmbench.get_backend(GOOD) is good  # one instance per name
    # imported from site-packages, not from the source tree
    assert PLUGIN_SRC.resolve() not in Path(sys.modules["lstmbench_testplugin"].__file__).resolve().parents


def test_good_plugin_passes_conformance(plugin_installed):
    results = check_backend(GOOD, max_examples=10)
    assert {(r.check, r.dtype) for r in results} == {(c, d) for c in CHECKS for d in ("float64", "float32")}
    assert all(r.backend == GOOD for r in results)
    assert all(r.status in ("passed", "skipped") for r in results), [r for r in results if r.status == "failed"]
    passed = {(r.check, r.dtype) for r in results if r.status == "passed"}
    for check in ("forward", "loss_and_grads", "training_steps", "bad_inputs"):
        assert (check, "float64") in passed and (check, "float32") in passed


def test_flipped_gradient_is_caught(plugin_installed, no_shrinking):
    checks = ["forward", "loss_and_grads", "training_steps"]
    results = check_backend(FLIPPED, checks=checks, max_examples=10, raise_on_failure=False)
    status = {(r.check, r.dtype): r for r in results}
    assert set(status) == {(c, d) for c in checks for d in ("float64", "float32")}
    for dtype in ("float64", "float32"):
        assert status["forward", dtype].status == "passed", status["forward", dtype].detail
        for check in ("loss_and_grads", "training_steps"):
            assert status[check, dtype].status == "failed"
        # the report points at the planted bug
        assert "l0.W_h" in status["loss_and_grads", dtype].detail


def test_flipped_gradient_raises_by_default(plugin_installed, no_shrinking):
    with pytest.raises(AssertionError) as info:
        check_backend(FLIPPED, checks=["loss_and_grads"], dtypes=("float64",), max_examples=10)
    message = str(info.value)
    assert "1 conformance check(s) failed" in message
    assert FLIPPED in message and "loss_and_grads" in message


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


def test_conformance_case_fails_for_flipped(plugin_installed, no_shrinking):
    with pytest.raises(AssertionError, match="l0.W_h"):
        run_conformance_case(FLIPPED, "loss_and_grads", "float64")
