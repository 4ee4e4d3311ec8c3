"""Which files make up the C kernel, and their hash.

build_ffi.py compiles this hash into the extension; the backend recomputes it
at run time and refuses to run a binary built from other sources (edited C
without a rebuild). Kept free of imports from the package so that the build
script can load it on its own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Everything whose change changes the binary: the C sources and the build script (flags).
SOURCES = ("lstm_api.h", "lstm.c", "lstm_body.h", "build_ffi.py")


def source_hash(folder: Path | str = HERE) -> str:
    """sha256 over the names and bytes of SOURCES in ``folder`` (a missing file counts as missing)."""
    digest = hashlib.sha256()
    for name in SOURCES:
        path = Path(folder) / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        digest.update(b"\0")
    return digest.hexdigest()
