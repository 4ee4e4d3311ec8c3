"""Backend discovery through the ``lstmbench.backends`` entry-point group.

Lazy: entry points are read (cheap metadata) but a backend's module is imported
only when that backend is asked for, so ``import lstmbench`` never imports
numba or compiles anything. Built-in backends register here exactly as a
third-party plugin does (see pyproject.toml).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from lstmbench.errors import BackendUnavailableError, UnknownBackendError
from lstmbench.protocol import Backend

ENTRY_POINT_GROUP = "lstmbench.backends"
#: the built-in CPU backends, fastest first (docs/benchmarks.md); the reference is the fallback
FASTEST_FIRST = ("c", "numba", "numpy")

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


def register_backend(backend: Backend) -> None:
    """Register a backend object at run time (for experiments and tests).
    A plugin package should use the entry point instead."""
    if not isinstance(backend, Backend):
        raise TypeError(f"expected an lstmbench.Backend instance, got {type(backend).__name__}")
    _extra[backend.name] = backend
    _instances.pop(backend.name, None)


def unregister_backend(name: str) -> None:
    _extra.pop(name, None)
    _instances.pop(name, None)


def load_backend(name: str) -> Backend:
    """The backend object named ``name``, whether or not it can run here."""
    if name in _extra:
        return _extra[name]
    if name in _instances:
        return _instances[name]
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        known = ", ".join(backend_names()) or "none"
        raise UnknownBackendError(f"unknown backend {name!r}; registered backends: {known}")
    factory = matches[0].load()
    backend = factory()
    if not isinstance(backend, Backend):
        raise TypeError(
            f"entry point {name!r} ({matches[0].value}) gave {type(backend).__name__}, not an lstmbench.Backend"
        )
    _instances[name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The backend named ``name``, ready to run; a clear error if it is unknown
    or cannot run here (the message says why and what to do)."""
    backend = load_backend(name)
    available, reason = backend.availability()
    if not available:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    return backend


def list_backends() -> list[BackendInfo]:
    """Every registered backend with its availability and the reason if not.
    A backend whose module fails to import is listed as unavailable with the error."""
    infos = []
    for name in backend_names():
        try:
            backend = load_backend(name)
            available, reason = backend.availability()
            dtypes, description = backend.capabilities.dtypes, backend.description
        except Exception as exc:  # a broken plugin must not hide the others
            available, reason, dtypes, description = False, f"failed to load: {exc}", (), ""
        infos.append(BackendInfo(name, available, reason, tuple(dtypes), description))
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
