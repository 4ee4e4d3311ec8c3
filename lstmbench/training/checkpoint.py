"""Checkpoints: parameters, optimizer state and run metadata in one .npz file.

Written atomically (a temporary file in the same folder, flushed and fsynced,
then renamed over the target), so a crash or Ctrl-C mid-write never leaves a
half-written checkpoint and never destroys the previous good one. Loaded with
``allow_pickle=False``: a checkpoint is data, never code.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.errors import CheckpointError, LstmbenchError, OutputError, ResourceError
from lstmbench.params import Params, check_params
from lstmbench.resources import check_fits

FORMAT = "lstmbench-checkpoint"
FORMAT_VERSION = 1
LAST_CHECKPOINT = "last.npz"  # resumable: latest parameters, optimizer state, position
BEST_CHECKPOINT = "best.npz"  # best validation loss: what `predict` uses
METRICS_FILE = "metrics.json"
PLOT_FILE = "predictions.png"
RUN_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, METRICS_FILE, PLOT_FILE)  # what one run writes in its folder
LOCK_FILE = ".lstmbench.lock"
HEADER_BYTES_MAX = 1 << 24  # a checkpoint's JSON header (vocabulary, history) is far below 16 MB


@dataclass
class Checkpoint:
    model: ModelConfig
    params: Params
    optimizer: OptimizerConfig | None = None
    opt_state: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # epoch, history, data description, ...
    carried: tuple[np.ndarray, np.ndarray] | None = None  # (h, c) a stateful run carries into its next minibatch


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it into place.
    An OSError (no permission, a full disk) becomes an OutputError naming the file; the
    file that was there before is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_why(exc)}") from None
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {_why(exc)}") from None
        raise


def check_output_dir(folder: str | os.PathLike, needed_bytes: int = 0, what: str = "output folder") -> Path:
    """Check, before any work, that ``folder`` is a writable folder or can be made one, with
    ``needed_bytes`` free on its disk; an OutputError that says what is wrong otherwise.
    Creates nothing (the first write does). ``what`` names the folder in messages (the
    CLI passes its flag)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder")
    base = next(p for p in (folder, *folder.parents) if p.exists())  # where the first write creates things
    if not base.is_dir():
        raise OutputError(f"{what} {folder} cannot be made: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lstmbench-probe.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if base == folder else f" (it would be made in {base})"
        raise OutputError(f"{what} {folder} is not writable{where}: {_why(exc)}") from None
    free = shutil.disk_usage(base).free
    if free < needed_bytes:
        raise OutputError(f"{what} {folder}: only {free / 1e6:.1f} MB free on its disk, the run needs about "
                          f"{needed_bytes / 1e6:.1f} MB for its checkpoints and plots")
    return folder


class RunFolder:
    """An output folder that holds one run, owned by one process while it runs.

    Entering takes an exclusive lock on a file in the folder (flock: the kernel releases it
    when the process ends, killed or not), so a second run into the same folder is refused
    at once, naming the process that holds it, instead of both writing there. Everything
    that decides what to do with the folder ("does it already hold a run?", replacing it)
    happens while the lock is held. Temporary files that a killed run left behind (from
    atomic_write) are removed on entry: with the lock held, no live process can own them.
    A run that fails before it writes anything leaves no folder it made itself.
    """

    def __init__(self, path: str | os.PathLike, what: str = "output folder") -> None:
        self.path = Path(path)
        self.what = what
        self.removed: list[tuple[str, int]] = []  # stale temporary files removed on entry: (name, bytes)
        self._fd: int | None = None
        self._made = False  # this run made the folder

    def __enter__(self) -> "RunFolder":
        try:
            self._made = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputError(f"{self.what} {self.path}: {_why(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that just started"
            os.close(fd)
            raise OutputError(f"{self.what} {self.path} is in use by another lstmbench run ({holder}); wait for it "
                              "to end, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        self.removed = self._remove_stale_temporaries()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._fd is None:
            return
        unused = exc_type is not None and self._made and [p.name for p in self.path.iterdir()] == [LOCK_FILE]
        if unused:
            (self.path / LOCK_FILE).unlink()  # before the lock is released: no one else can hold it yet
        os.close(self._fd)  # closing releases the lock
        self._fd = None
        if unused:
            try:
                self.path.rmdir()
            except OSError:  # another run has made its own lock file there since: the folder is its
                pass

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in (LAST_CHECKPOINT, BEST_CHECKPOINT))

    def clear(self) -> None:
        """Remove the files of the run this folder holds (for --overwrite), so that no file of the
        old run stays beside the new one's."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def _remove_stale_temporaries(self) -> list[tuple[str, int]]:
        removed = []
        for name in RUN_FILES:
            for tmp in self.path.glob(f".{name}.*.tmp"):  # atomic_write's temporary names
                size = tmp.stat().st_size
                tmp.unlink(missing_ok=True)
                removed.append((tmp.name, size))
        return removed


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{exc.strerror.lower()} (check the folder's permissions, or choose another)"
    return exc.strerror or str(exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(
    path,
    model: ModelConfig,
    params: Mapping[str, np.ndarray],
    optimizer: OptimizerConfig | None = None,
    opt_state: Mapping[str, np.ndarray] | None = None,
    meta: Mapping[str, Any] | None = None,
    carried: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write a checkpoint atomically; ``carried``: the state (h, c), each (L, B, H), that a
    stateful run carries into its next minibatch (stored as state/h and state/c)."""
    check_params(model, params)
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": model.to_dict(),
        "optimizer": optimizer.to_dict() if optimizer else None,
        "meta": dict(meta or {}),
    }
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"opt/{k}": np.asarray(v) for k, v in (opt_state or {}).items()})
    if carried is not None:
        arrays.update({"state/h": np.asarray(carried[0]), "state/c": np.asarray(carried[1])})
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path, arrays: bool = True) -> Checkpoint:
    """Read a checkpoint; any problem is a CheckpointError naming the file. The header is read
    first and every array's size is checked against it before the array is read, so a
    tampered file cannot make this allocate more than the model it claims to hold.
    ``arrays=False`` reads the header alone (model, optimizer, meta; no parameters)."""
    path = _checkpoint_file(path)
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:  # we close the file, even on error
            sizes = {name[: -len(".npy")]: data.zip.getinfo(name).file_size for name in data.zip.namelist()}
            if sizes.get("header", HEADER_BYTES_MAX + 1) > HEADER_BYTES_MAX:
                raise CheckpointError(f"{path} is not an lstmbench checkpoint (no readable header)")
            header = json.loads(bytes(data["header"]).decode())
            model, optimizer = _read_header(path, header)
            _check_sizes(path, model, sizes, _streams(header))
            if arrays:
                check_fits(sum(sizes.values()), f"reading checkpoint {path}")
            stored = {k: data[k] for k in data.files if k != "header" and arrays}
    except (CheckpointError, ResourceError):
        raise
    except Exception as exc:  # np.load, zipfile and json raise many types on damaged files
        raise CheckpointError(f"{path} is a damaged or foreign .npz file, not a readable lstmbench checkpoint "
                              f"({type(exc).__name__}: {exc})") from None
    meta = header.get("meta") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is inconsistent: its meta is a {type(meta).__name__}, not a mapping")
    if not arrays:
        return Checkpoint(model, {}, optimizer, None, meta)
    params = {k[len("param/") :]: v for k, v in stored.items() if k.startswith("param/")}
    try:
        check_params(model, params, what=f"{path} parameters")
    except LstmbenchError as exc:
        raise CheckpointError(f"{path} is inconsistent: {exc}") from None
    opt_state = {k[len("opt/") :]: v for k, v in stored.items() if k.startswith("opt/")} or None
    carried = (stored["state/h"], stored["state/c"]) if "state/h" in stored and "state/c" in stored else None
    return Checkpoint(model, params, optimizer, opt_state, meta, carried)


def _checkpoint_file(path) -> Path:
    path = Path(path)
    if path.is_dir():
        names = " or ".join(str(path / n) for n in (BEST_CHECKPOINT, LAST_CHECKPOINT) if (path / n).is_file())
        raise CheckpointError(f"{path} is a folder; name a checkpoint file in it"
                              + (f": {names}" if names else
                                 f" (lstmbench train writes {BEST_CHECKPOINT} and {LAST_CHECKPOINT})"))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # np.load would try to read it as a pickle, and say so
        raise CheckpointError(f"{path} is not an lstmbench checkpoint (those are .npz files written by "
                              "`lstmbench train` or lstmbench.save_params)")
    return path


def _read_header(path: Path, header) -> tuple[ModelConfig, OptimizerConfig | None]:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lstmbench checkpoint")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {header.get('version')}, this lstmbench reads {FORMAT_VERSION}")
    try:
        if not isinstance(header.get("model"), dict):
            raise CheckpointError("the header has no model description")
        model = ModelConfig.from_dict(header["model"])
        optimizer = OptimizerConfig.from_dict(header["optimizer"]) if header.get("optimizer") else None
    except LstmbenchError as exc:
        raise CheckpointError(f"{path} is inconsistent: {exc}") from None
    return model, optimizer


def _streams(header: dict) -> int:
    """The rows of the carried state a checkpoint may hold: its run's batch size (0 if none)."""
    meta = header.get("meta")
    run = meta.get("run") if isinstance(meta, dict) else None
    size = run.get("batch_size") if isinstance(run, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0


def _check_sizes(path: Path, model: ModelConfig, sizes: dict[str, int], streams: int = 0) -> None:
    """Every array in the file is one the header's model has, of at most its size (a carried
    state: of ``streams`` rows)."""
    params = [k for k in sizes if k.startswith("param/")]
    if len(params) != 3 * model.num_layers + 2:  # before param_shapes(), which walks every layer
        raise CheckpointError(f"{path} is inconsistent: it holds {len(params)} parameter arrays, a "
                              f"{model.num_layers}-layer model has {3 * model.num_layers + 2}")
    npy_header = 4096  # .npy's own header, at most a few hundred bytes here
    limits = {f"param/{k}": int(np.prod(s)) * model.np_dtype.itemsize + npy_header
              for k, s in model.param_shapes().items()}
    limits["opt/step"] = npy_header + 8
    if streams:
        limits["state/h"] = limits["state/c"] = model.num_layers * streams * model.hidden_size * 8 + npy_header
    for name, size in sizes.items():
        if name == "header":
            continue
        slot_param = name.split("/", 2)[-1] if name.startswith("opt/") else None
        limit = limits.get(name, limits.get(f"param/{slot_param}"))
        if limit is None:
            raise CheckpointError(f"{path} is inconsistent: it holds an array {name!r} that no "
                                  f"{model.num_layers}-layer model has")
        if size > limit:
            raise CheckpointError(f"{path} is inconsistent: array {name!r} holds {size} bytes, the model's "
                                  f"{name.split('/')[-1]} needs at most {limit}")


def save_params(path, params: Mapping[str, np.ndarray], cfg: ModelConfig) -> None:
    """Write params (and the config they belong to) atomically to an .npz file."""
    save_checkpoint(path, cfg, params)


def load_params(path, cfg: ModelConfig | None = None) -> tuple[Params, ModelConfig]:
    """Read params written by :func:`save_params` or a training checkpoint.
    If ``cfg`` is given, a mismatch is a CheckpointError."""
    ckpt = load_checkpoint(path)
    if cfg is not None and ckpt.model != cfg:
        raise CheckpointError(f"{path}: checkpoint model {ckpt.model} does not match {cfg}")
    return ckpt.params, ckpt.model
