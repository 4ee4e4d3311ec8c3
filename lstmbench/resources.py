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
    """A byte count for messages: "4.6 GB", "320 MB"."""
    return f"{n / 1e9:.3g} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


def check_fits(needed: float, what: str, advice: str = "") -> None:
    """A ResourceError naming ``what``, both figures and ``advice`` when ``needed`` bytes
    are more than the memory available now."""
    available = available_memory()
    if needed > available:
        raise ResourceError(f"{what} needs about {gigabytes(needed)} of memory and this machine has "
                            f"{gigabytes(available)} available" + (f"; {advice}" if advice else ""))


#: copies of the parameters a training run holds at once: the host's, the backend's, the
#: gradient, Adam's two moments, the best so far, the copies handed out at the end of an
#: epoch and the flat buffers of the fused backends
PARAMETER_COPIES = 10
#: values kept per hidden unit, step, layer and row for backpropagation through time and its
#: temporaries (gate pre-activations and activations, c, tanh(c), h, their gradients)
ACTIVATION_WORDS = 24


def training_bytes(cfg, batch_size: int, steps: int, threads: int = 1, eval_rows: int = 0) -> int:
    """About the memory a training run of ``cfg`` needs beyond its data: the parameters and
    their copies (one gradient buffer more per thread), and the activations of the larger of a
    training minibatch and an evaluation chunk of ``eval_rows`` rows. An estimate meant to
    refuse what cannot fit, not a promise."""
    itemsize = cfg.np_dtype.itemsize
    parameters = cfg.num_params() * (PARAMETER_COPIES + threads)
    outputs_per_step = 3 * cfg.output_size if cfg.many_to_many else 0  # logits, softmax, their gradient
    per_row = steps * (cfg.num_layers * ACTIVATION_WORDS * cfg.hidden_size + outputs_per_step)
    return (parameters + max(batch_size, eval_rows) * per_row) * itemsize
