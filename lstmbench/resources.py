"""What the machine can give a run: memory and cores, checked before work starts.

A size that cannot fit is refused with the figure, before anything is allocated,
rather than ending in a MemoryError (or the kernel's OOM killer) minutes later.
"""

from __future__ import annotations

import os

from lstmbench.errors import ResourceError


def available_memory() -> int:
    """Bytes this process can allocate without swapping: Linux's MemAvailable (free
    memory plus what the page cache can give back), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62  # unknown: do not refuse anything


def gigabytes(n: float) -> str:
    """A byte count for messages: "4.6 GB", "0.02 GB"."""
    return f"{n / 1e9:.3g} GB"


def check_fits(needed: float, what: str, advice: str = "") -> None:
    """A ResourceError naming ``what``, both figures and ``advice`` when ``needed`` bytes
    are more than the memory available now."""
    available = available_memory()
    if needed > available:
        raise ResourceError(f"{what} needs about {gigabytes(needed)} of memory and this machine has "
                            f"{gigabytes(available)} available" + (f"; {advice}" if advice else ""))
