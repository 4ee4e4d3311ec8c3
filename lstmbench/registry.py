"""Backend discovery through the ``lstmbench.backends`` entry-point group.

Lazy: entry points are read (cheap metadata) but a backend's module is imported
only when that backend is asked for, so ``import lstmbench`` never imports
numba or compiles anything. Built-in backends register here exactly as a
third-party plugin does (see pyproject.toml).

The built-in names are the lstmbench distribution's own entry points: a plugin
that registers one of them is refused (listed, never loaded), and two plugins
of one name are an error naming both, not an arbitrary pick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from lstmbench.errors import (
    BackendConflictError,
    BackendLoadError,
    BackendUnavailableError,
    ConfigError,
    LstmbenchError,
    UnknownBackendError,
)
from lstmbench.protocol import Backend

ENTRY_POINT_GROUP = "lstmbench.backends"
BUILT_IN_DIST = "lstmbench"  # the distribution whose entry points are the built-in backends
#: the built-in CPU backends, fastest first (docs/benchmarks.md); the reference is the fallback
FASTEST_FIRST = ("c", "numba", "numpy")
#: the NumPy reference: the answer every backend is checked against, and the fallback of FASTEST_FIRST
REFERENCE = FASTEST_FIRST[-1]

_instances: dict[str, Backend] = {}
_extra: dict[str, Backend] = {}  # registered at run time with register_backend()


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str  # why not available ("" when it is)
    dtypes: tuple[str, ...]
    description: str


def backend_names() -> list[str]:
    """Every registered name, entry points first, without importing any backend."""
    names = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    return names + sorted(n for n in _extra if n not in names)


def register_backend(backend: Backend, *, replace: bool = False) -> None:
    """Register a backend object at run time (for experiments and tests).
    A plugin package should use the entry point instead. A built-in backend's
    name is refused unless ``replace=True``: then this object replaces the
    built-in one in this process, until unregister_backend()."""
    if not isinstance(backend, Backend):
        raise TypeError(f"expected an lstmbench.Backend instance, got {type(backend).__name__}")
    if backend.name in _built_in_names() and not replace:
        raise ConfigError(f"{backend.name!r} is the name of a built-in backend; register yours under another "
                          "name, or pass replace=True to replace the built-in one in this process")
    _extra[backend.name] = backend
    _instances.pop(backend.name, None)


def unregister_backend(name: str) -> None:
    _extra.pop(name, None)
    _instances.pop(name, None)


def load_backend(name: str) -> Backend:
    """The backend object named ``name``, whether or not it can run here. A plugin
    that fails to load is a BackendLoadError saying which and why."""
    if name in _extra:
        return _extra[name]
    if name not in _instances:
        _instances[name] = _construct(name, _entry_point(name))
    return _instances[name]


def get_backend(name: str) -> Backend:
    """The backend named ``name``, ready to run; a clear error if it is unknown
    or cannot run here (the message says why and what to do)."""
    backend = load_backend(name)
    available, reason = backend.availability()
    if not available:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    return backend


def list_backends() -> list[BackendInfo]:
    """Every registered backend with its availability and the reason if not, and after
    it any plugin refused for taking its (built-in) name. A backend whose module fails
    to import is listed as unavailable with the error."""
    refused = _refused_plugins()
    infos = []
    for name in backend_names():
        infos.append(_info(name))
        infos += [_refused_info(ep) for ep in refused if ep.name == name]
    return infos


def fastest_available() -> str:
    """The name of the fastest built-in backend that can run here (CPU backends only: a
    GPU pays off for large models, so `--backend cuda` is the user's choice)."""
    return next(name for name in FASTEST_FIRST if _runs_here(name))


def _runs_here(name: str) -> bool:
    if name == FASTEST_FIRST[-1]:
        return True
    try:
        return load_backend(name).availability()[0]
    except Exception:  # a backend that fails to load is not available
        return False


# -- entry points ----------------------------------------------------------------------


def _is_built_in(ep: EntryPoint) -> bool:
    dist = ep.dist  # None only for an EntryPoint made by hand
    return dist is not None and re.sub(r"[-_.]+", "-", dist.name).lower() == BUILT_IN_DIST


def _built_in_names() -> set[str]:
    return {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if _is_built_in(ep)}


def _refused_plugins() -> list[EntryPoint]:
    """Plugin entry points that take a built-in name."""
    built_in = _built_in_names()
    return [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name in built_in and not _is_built_in(ep)]


def _entry_point(name: str) -> EntryPoint:
    """The entry point that defines ``name``: the built-in one, else the one plugin of that name."""
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        known = ", ".join(backend_names()) or "none"
        raise UnknownBackendError(f"unknown backend {name!r}; registered backends: {known}")
    built_in = [ep for ep in matches if _is_built_in(ep)]
    if built_in or len(matches) == 1:
        return (built_in or matches)[0]
    plugins = " and ".join(f"{_dist(ep)} ({ep.value})" for ep in matches)
    raise BackendConflictError(f"backend name {name!r} is registered by {len(matches)} plugins: {plugins}; "
                               "pip uninstall all but one of them, or ask their authors to rename one")


def _construct(name: str, ep: EntryPoint) -> Backend:
    """The backend object ``ep`` gives; a BackendLoadError if anything goes wrong."""
    try:
        backend = ep.load()()
    except Exception as exc:  # the plugin's import or constructor: anything at all
        raise BackendLoadError(_load_failure(name, ep, _one_line(exc))) from exc
    if not isinstance(backend, Backend):
        raise BackendLoadError(_load_failure(
            name, ep, f"the entry point gave {type(backend).__name__}, not an lstmbench.Backend"))
    return backend


def _load_failure(name: str, ep: EntryPoint, what: str) -> str:
    """``backend 'bad' (entry point bad_pkg:Backend from bad-pkg 0.1) failed to load: <what> (whose fault)``"""
    fault = ("a bug in lstmbench: please report it" if _is_built_in(ep) else
             f"a fault of the plugin {_dist(ep, version=False)} or of what it imports, not of lstmbench")
    return f"backend {name!r} (entry point {ep.value} from {_dist(ep)}) failed to load: {what} ({fault})"


def _dist(ep: EntryPoint, version: bool = True) -> str:
    """``bad-pkg 0.1``: the distribution that declares ``ep``."""
    dist = ep.dist
    if dist is None:
        return "an unknown distribution"
    return f"{dist.name} {dist.version}" if version else dist.name


def _one_line(exc: BaseException) -> str:
    """``ImportError: No module named 'x'``: the type and the first line of the message."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" + (" ..." if len(lines) > 1 else "")


# -- list_backends' rows ----------------------------------------------------------------


def _info(name: str) -> BackendInfo:
    try:
        backend = load_backend(name)
        available, reason = backend.availability()
        dtypes, description = backend.capabilities.dtypes, backend.description
    except LstmbenchError as exc:  # a broken plugin, or two of one name: the message says it all
        available, reason, dtypes, description = False, str(exc), (), ""
    except Exception as exc:  # a broken plugin must not hide the others
        available, reason, dtypes, description = False, f"failed to load: {exc}", (), ""
    return BackendInfo(name, available, reason, tuple(dtypes), description)


def _refused_info(ep: EntryPoint) -> BackendInfo:
    reason = (f"refused: the plugin {_dist(ep)} ({ep.value}) registers the built-in backend name {ep.name!r}; "
              f"it must pick another name (the built-in {ep.name} is used)")
    return BackendInfo(f"{ep.name} (plugin from {_dist(ep)}: refused)", False, reason, (), "")
