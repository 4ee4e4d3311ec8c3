"""Data-parallel training over MPI (mpi4py): the same model on many processes and nodes.

Horovod's scheme, in the core so that every backend, built-in or plugin, trains
this way unchanged:

* every rank holds the whole model and the whole dataset, and walks the same
  epoch order (the shuffle depends on the seed alone);
* each global minibatch is cut into contiguous shards, one per rank, whose sizes
  differ by at most one row (:func:`shard`);
* a rank's backend computes the mean gradient and loss of its shard; the training
  state's gradient hook (:class:`lstmbench.protocol.TrainState`) rescales both by
  shard terms / global terms (rows; with lengths in a many-to-many model, valid
  steps), so that they are sums over the shard divided by the global count of
  loss terms, and sums them over all ranks with one Allreduce: every rank
  then holds exactly the global mean gradient and applies the same update
  (clipping uses the global norm, since it comes after the hook);
* rank 0's initial parameters and optimizer state (also on resume) are
  broadcast; validation losses are computed on shards and summed; after each
  epoch the ranks compare a checksum of their parameters;
* only rank 0 prints, and writes checkpoints, metrics and plots.

With one process nothing here imports mpi4py, and training is the single-process
loop. docs/distributed.md says how to launch it and what it guarantees.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from lstmbench.errors import LstmbenchError

#: environment variables an MPI launcher sets in every process: (size, rank)
LAUNCHER_VARIABLES = (
    ("PMI_SIZE", "PMI_RANK"),  # MPICH's and Intel MPI's mpiexec (Hydra), srun --mpi=pmi2
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # Open MPI's mpiexec
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),  # srun (only set in a job step, not in the batch script)
)
INSTALL = "pip install 'lstmbench[mpi]'"
ABORT_GRACE_S = 0.3  # seconds a failing rank waits after its error line, before Abort


class DistributedError(LstmbenchError, RuntimeError):
    """The processes of a data-parallel run cannot work together (MPI missing or
    mismatched, ranks disagreeing)."""


def launched() -> tuple[int, int, str | None]:
    """(processes, this rank, the variable that said so) from the launcher's environment;
    (1, 0, None) when no MPI launcher started this process."""
    for size_var, rank_var in LAUNCHER_VARIABLES:
        size = os.environ.get(size_var)
        if size and size.isdigit() and int(size) > 0:
            rank = os.environ.get(rank_var, "0")
            return int(size), int(rank) if rank.isdigit() else 0, size_var
    return 1, 0, None


def shard(rows: int, size: int, rank: int) -> slice:
    """Rank ``rank``'s contiguous part of ``rows`` rows: the first ``rows % size`` ranks
    take one row more, so sizes differ by at most one."""
    base, extra = divmod(rows, size)
    lo = rank * base + min(rank, extra)
    return slice(lo, lo + base + (rank < extra))


@dataclass
class World:
    """The processes of one run: ``comm`` is an mpi4py communicator, or None for one process."""

    comm: Any = None
    rank: int = 0
    size: int = 1
    local_size: int = 1  # ranks on this node

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # -- collectives (trivial with one process) ------------------------------------------

    def allreduce_(self, buffer: np.ndarray) -> None:
        """Sum ``buffer`` over all ranks, in place (an MPI call whenever there is a
        communicator, even of one rank: what a benchmark of its cost needs)."""
        if self.comm is not None:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)

    def allgather(self, value) -> list:
        return self.comm.allgather(value) if self.distributed else [value]

    def bcast(self, value):
        """Rank 0's ``value`` on every rank."""
        return self.comm.bcast(value, root=0) if self.distributed else value

    def barrier(self) -> None:
        if self.distributed:
            self.comm.Barrier()

    def idle_barrier(self, poll_s: float = 0.005) -> None:
        """A barrier that sleeps while it waits: MPI's own spins, which would take a core
        from ranks still working (a benchmark's ranks that sit out a measurement)."""
        if self.distributed:
            import time

            request = self.comm.Ibarrier()
            while not request.Test():
                time.sleep(poll_s)

    def subset(self, ranks: int) -> "World | None":
        """A World of this world's first ``ranks`` ranks; None on the ranks left out (collective)."""
        if not self.distributed:
            return self
        from mpi4py import MPI

        comm = self.comm.Split(0 if self.rank < ranks else MPI.UNDEFINED, self.rank)
        if comm == MPI.COMM_NULL:
            return None
        return World(comm, comm.Get_rank(), comm.Get_size(), _local_size(comm))

    def abort(self, code: int) -> None:
        """End every process of the job now (a rank failed alone: the others would wait forever)."""
        if self.distributed:
            # the launcher forwards a rank's stderr through a pipe; Abort tears the job down at
            # once and, seen once in CI, before it forwarded this rank's error line: a moment first
            time.sleep(ABORT_GRACE_S)
            self.comm.Abort(code)

    # -- agreement -----------------------------------------------------------------------

    def check_same(self, value, what: str,
                   fix: str = "every rank must be started with the same arguments and data") -> None:
        """Every rank must hold the same ``value`` (compared by a hash of its JSON form);
        DistributedError on every rank, naming the ranks that differ from rank 0, if not."""
        if not self.distributed:
            return
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        digests = self.allgather(digest)
        others = [r for r, d in enumerate(digests) if d != digests[0]]
        if others:
            raise on_every_rank(DistributedError(f"rank(s) {', '.join(map(str, others))} differ from rank 0 in {what} "
                                   f"({digests[others[0]][:12]} vs {digests[0][:12]}); {fix}"))

    def check_same_arrays(self, arrays: dict[str, np.ndarray], what: str, **fix) -> None:
        """Like check_same, for arrays (bytes hashed in key order)."""
        if not self.distributed:
            return
        h = hashlib.sha256()
        for key in sorted(arrays):
            h.update(key.encode())
            h.update(np.ascontiguousarray(arrays[key]).tobytes())
        self.check_same(h.hexdigest(), what, **fix)

    @contextmanager
    def together(self, what: str) -> Iterator[None]:
        """Run a block that may fail on some ranks only (reading data, building the model)
        and then agree: if it failed anywhere, it fails everywhere, with the failing
        rank's error, instead of leaving the other ranks waiting in a collective."""
        if not self.distributed:
            yield
            return
        error: BaseException | None = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001 (re-raised below, on every rank)
            error = exc
        failures = [(r, e) for r, e in enumerate(self.allgather(None if error is None else
                                                                (type(error).__name__, str(error))))
                    if e is not None]
        if error is not None:
            raise on_every_rank(error)
        if failures:
            rank, (kind, message) = failures[0]
            raise on_every_rank(DistributedError(f"rank {rank} failed while {what}: {kind}: {message}"))

    # -- what training uses -----------------------------------------------------------------

    def gradient_hook(self, terms: int, global_terms: int, stop_requested: Callable[[], bool]):
        """The TrainState.gradient_hook of one step on this rank's shard of a global minibatch:
        ``terms`` the shard's loss terms, ``global_terms`` the minibatch's (rows; with lengths
        in a many-to-many model, the sum of the rows' lengths: design.md section 8). The hook
        maps (gradient, loss) -> global mean loss: the shard's mean becomes its sum over the
        global count of terms, and the sum over ranks (in place for the gradient) the global
        mean. It also sums every rank's stop request (Ctrl-C) so that all ranks see the same
        decision in ``hook.stop`` at the same step."""
        weight = terms / global_terms

        def hook(grad: np.ndarray, loss: float) -> float:
            grad *= grad.dtype.type(weight)  # mean over the shard -> sum over the shard / global terms
            self.allreduce_(grad)
            scalars = np.array([loss * weight, float(stop_requested())])
            self.allreduce_(scalars)
            hook.stop = bool(scalars[1] > 0)
            return float(scalars[0])

        hook.stop = False
        return hook

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any."""
        if not self.distributed:
            return bool(flag)
        value = np.array([float(flag)])
        self.allreduce_(value)
        return bool(value[0] > 0)


SINGLE = World()


def on_every_rank(exc: BaseException) -> BaseException:
    """Mark an error that every rank raises at the same point (a failed agreement, a loss
    that is the same everywhere): the ranks can stop on their own, no abort needed."""
    exc.lstmbench_on_every_rank = True
    return exc


def raised_on_every_rank(exc: BaseException) -> bool:
    return bool(getattr(exc, "lstmbench_on_every_rank", False))


_WORLD: World | None = None  # made once per process, by world()


def current() -> World:
    """The World of this process if world() has made one, else SINGLE (for error handlers)."""
    return _WORLD or SINGLE


def world() -> World:
    """The processes of this run, from the launcher's environment: SINGLE unless an MPI
    launcher started more than one. Clear errors when mpi4py is missing or does not
    belong to the MPI that started the processes."""
    global _WORLD
    if _WORLD is None:
        _WORLD = _connect()
    return _WORLD


def _connect() -> World:
    size, rank, variable = launched()
    if size <= 1:
        return SINGLE
    try:
        from mpi4py import MPI
    except ModuleNotFoundError as exc:
        if exc.name != "mpi4py":
            raise
        raise DistributedError(f"an MPI launcher started {size} processes ({variable}={size}), but mpi4py is "
                               f"not installed; {INSTALL}") from None
    except (ImportError, RuntimeError, OSError) as exc:  # mpi4py is there, its MPI library is not
        raise DistributedError(f"mpi4py cannot load its MPI library ({exc}); {INSTALL} installs one from PyPI, "
                               "or see docs/distributed.md for a cluster's own MPI") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != size:
        library = MPI.Get_library_version().strip().splitlines()[0]
        raise DistributedError(
            f"the launcher started {size} processes ({variable}={size}), but mpi4py's MPI ({library}) sees "
            f"{comm.Get_size()}: this mpiexec belongs to another MPI than the one mpi4py uses; launch with that "
            "MPI's own mpiexec, or build mpi4py against this one (docs/distributed.md)")
    return World(comm, comm.Get_rank(), comm.Get_size(), _local_size(comm))


def _local_size(comm) -> int:
    """How many of ``comm``'s ranks share this rank's node (collective)."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    size = local.Get_size()
    local.Free()
    return size


def threads_per_rank(w: World) -> int:
    """Threads for this rank's backend: its share of the node's cores, so that the ranks
    on one node do not oversubscribe it. A launcher that already bound the rank to fewer
    cores has decided for us."""
    from lstmbench.protocol import default_threads

    cores = default_threads()
    if w.local_size > 1 and cores >= (os.cpu_count() or cores):
        cores = max(1, cores // w.local_size)
    return cores
