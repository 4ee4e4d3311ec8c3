"""Forward passes (inference: no gradient) per backend, as `lstmbench bench --forward-only`
times them: on the suite's workloads and on DeepBench's inference shapes (WORKLOADS: those
that fit asv's time here; lstmbench.bench.workloads.suite_workloads), each verified against the
reference first (lstmbench.bench.verify.verify_forward); and the same-process speedups of a
backend's forward pass over the reference's (1 BLAS thread) and over torch.nn.LSTM under
torch.no_grad() (verified too, at its best thread count), timed in the same setup."""

from lstmbench.bench.peers import torch_peer
from lstmbench.bench.workloads import SUITE, suite_workloads
from lstmbench.params import init_params
from lstmbench.registry import REFERENCE

from .common import BACKENDS, DTYPE, backend_or_skip, settle

try:
    from lstmbench.bench.run import FORWARD
except ImportError:  # a commit before forward-only rows: `asv run` over history must still import this file
    FORWARD = None

#: what asv times here, about three minutes in all (`asv run --python=same --quick -b Inference`): the
#: suite but char-onehot, and DeepBench's inference shapes up to H=1024 at B=1 and 4. Left to
#: `lstmbench bench --suite --forward-only` and `--suite deepbench --forward-only`: char-onehot and
#: the H=1536 and 2048 shapes, whose float64 verification (run again in every benchmark's process)
#: takes 5 to 30 s each.
if FORWARD is None:
    WORKLOADS = {name: SUITE[name] for name in SUITE}  # every benchmark skips in setup
else:
    ASV_TIME_LEFT_OUT = {"char-onehot"} | {w.name for w in suite_workloads(["deepbench"], forward_only=True)
                                           if w.hidden > 1024 or w.batch == 2}
    WORKLOADS = {w.name: w for w in suite_workloads([*SUITE, "deepbench-inference"])
                 if w.name not in ASV_TIME_LEFT_OUT}
REPEATS = 5  # forward passes timed in setup for the speedups (their median)


def _verified_case(backend: str, workload: str):
    """(backend, the workload's case for a forward pass), after the backend's forward was checked
    against the reference's on it (NotImplementedError: asv skips what the backend cannot run)."""
    if FORWARD is None:
        raise NotImplementedError("this commit has no forward-only rows")
    case = WORKLOADS[workload].case(DTYPE, forward_only=True)
    runner = backend_or_skip(backend, case.cfg)
    if case.lengths is not None and not runner.capabilities.sequences:
        raise NotImplementedError(f"{backend} does not take lengths")
    if backend != REFERENCE and (problem := FORWARD.verify(runner, case)):
        raise AssertionError(f"{backend}'s forward disagrees with the reference on {workload}: {problem}")
    return runner, case


class Inference:
    """One forward pass per backend and workload."""

    params = [BACKENDS, list(WORKLOADS)]
    param_names = ["backend", "workload"]
    number = 1
    repeat = (2, 5, 20.0)
    timeout = 300

    def setup(self, backend, workload):
        self.backend, case = _verified_case(backend, workload)
        self.cfg, self.x, self.extra = case.cfg, case.x, case.sequence_args()
        self.params = init_params(self.cfg, seed=0)
        for _ in range(2):  # JIT compilation, buffers
            self.time_forward(backend, workload)
        settle()

    def time_forward(self, backend, workload):
        self.backend.forward(self.cfg, self.params, self.x, **self.extra)


class InferenceSpeedup:
    """A backend's forward pass against the reference's on one BLAS thread, and against torch's
    under no_grad (verified, at its best thread count), all timed in one process (asv's
    setup_cache: each workload's rows one after another, every pair verified once) on the same
    batch; unit x, higher is faster."""

    params = [[b for b in BACKENDS if b != REFERENCE], list(WORKLOADS)]
    param_names = ["backend", "workload"]
    timeout = 900

    def setup_cache(self):
        """{(backend, workload): (over the reference, over torch or None) or the reason for none}."""
        if FORWARD is None:  # an older commit: setup skips every benchmark (an exception here would fail them)
            return {}
        peer = torch_peer("cpu", forward_only=True)
        found = {}
        for workload in WORKLOADS:
            reference, case = _verified_case(REFERENCE, workload)
            seconds = FORWARD.time(reference, case, REPEATS).median_s
            row = peer(case, REPEATS) if peer else None
            torch_seconds = row.timing.median_s if row is not None and row.timing is not None else None
            for backend in self.params[0]:
                try:
                    runner = _verified_case(backend, workload)[0]
                except (NotImplementedError, AssertionError) as exc:
                    found[backend, workload] = f"{type(exc).__name__}: {exc}"
                    continue
                own = FORWARD.time(runner, case, REPEATS).median_s
                found[backend, workload] = (seconds / own, torch_seconds and torch_seconds / own)
        return found

    def setup(self, found, backend, workload):
        entry = found.get((backend, workload), "NotImplementedError: this commit has no forward-only rows")
        if isinstance(entry, str):  # skipped (asv: n/a) or failed, as the setup of one benchmark would be
            raise (NotImplementedError if entry.startswith("NotImplementedError") else AssertionError)(entry)

    def track_over_reference(self, found, backend, workload):
        return found[backend, workload][0]

    track_over_reference.unit = "x"

    def track_over_torch_no_grad(self, found, backend, workload):
        if found[backend, workload][1] is None:
            raise NotImplementedError("torch is not installed, or disagrees with the reference")
        return found[backend, workload][1]

    track_over_torch_no_grad.unit = "x"
