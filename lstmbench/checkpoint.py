"""Checkpoints: parameters, optimizer state and run metadata in one .npz file.

Written atomically (a temporary file in the same folder, flushed and fsynced,
then renamed over the target), so a crash or Ctrl-C mid-write never leaves a
half-written checkpoint and never destroys the previous good one. Loaded with
``allow_pickle=False``: a checkpoint is data, never code.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.errors import CheckpointError, LstmbenchError, OutputError
from lstmbench.params import Params, check_params

FORMAT = "lstmbench-checkpoint"
FORMAT_VERSION = 1
LAST_CHECKPOINT = "last.npz"  # resumable: latest parameters, optimizer state, position
BEST_CHECKPOINT = "best.npz"  # best validation loss: what `predict` uses


@dataclass
class Checkpoint:
    model: ModelConfig
    params: Params
    optimizer: OptimizerConfig | None = None
    opt_state: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # epoch, history, data description, ...


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
) -> None:
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
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint; any problem is a CheckpointError naming the file."""
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
                              "`lstmbench train` or lstmbench.save_checkpoint)")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:  # we close the file, even on error
            arrays = {k: data[k] for k in data.files}
        header = json.loads(bytes(arrays.pop("header")).decode())
    except Exception as exc:  # np.load and zipfile raise many types on damaged files
        raise CheckpointError(f"{path} is a damaged or foreign .npz file, not a readable lstmbench checkpoint "
                              f"({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lstmbench checkpoint")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {header.get('version')}, this lstmbench reads {FORMAT_VERSION}")
    try:
        model = ModelConfig.from_dict(header["model"])
        optimizer = OptimizerConfig.from_dict(header["optimizer"]) if header.get("optimizer") else None
        params = {k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")}
        check_params(model, params, what=f"{path} parameters")
    except LstmbenchError as exc:
        raise CheckpointError(f"{path} is inconsistent: {exc}") from None
    opt_state = {k[len("opt/") :]: v for k, v in arrays.items() if k.startswith("opt/")} or None
    return Checkpoint(model, params, optimizer, opt_state, header.get("meta", {}))
