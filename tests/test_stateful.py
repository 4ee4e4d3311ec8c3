"""A state carried across calls (design.md section 8): train_step(..., carry_state=True) and its
contract for every backend, stateful training (truncated BPTT) with its stream layout, its
reset per epoch and its bit-for-bit resume, and generation one symbol at a time."""

from dataclasses import replace

import numpy as np
import pytest

import lstmbench as lb
import lstmbench.data as lbdata
from lstmbench.cli import main
from lstmbench.errors import BackendError, ConfigError, DataError, DTypeError, NonFiniteError, ShapeError
from lstmbench.errors import UnsupportedError
from lstmbench.training import experiment
from lstmbench.training.checkpoint import load_checkpoint
from lstmbench.training.loop import LAST_CHECKPOINT, RunConfig, train
from lstmbench_backends.reference import reference
from lstmbench_backends.reference.reference import NumpyReference

CFG = lb.ModelConfig(input_size=3, hidden_size=4, output_size=3, num_layers=2, loss="xent", many_to_many=True,
                     dtype="float64")
OPT = lb.OptimizerConfig("adam", lr=0.05)


def batch(seed=0, B=3, T=5, cfg=CFG):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, cfg.input_size)), rng.integers(0, cfg.output_size, (B, T))


class PluginStyle(lb.Backend):
    """A plugin with states but no training step of its own: the protocol's default step carries."""

    name = "test-plugin-with-states"
    capabilities = lb.Capabilities(sequences=True)

    def _forward(self, cfg, params, x, return_state=False, **sequences):
        y, caches = reference.forward_with_caches(cfg, params, x, **sequences)
        return (y, reference.final_state(caches)) if return_state else y

    def _loss_and_grads(self, cfg, params, x, y, **sequences):
        return reference.loss_and_grads(cfg, params, x, y, **sequences)


class NoStates(lb.Backend):
    name = "test-no-states"

    def _forward(self, cfg, params, x):
        return reference.forward_with_caches(cfg, params, x)[0]

    def _loss_and_grads(self, cfg, params, x, y):
        return reference.loss_and_grads(cfg, params, x, y)


# -- the protocol -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [NumpyReference(), PluginStyle(), lb.get_backend("numba")], ids=lambda b: b.name)
def test_carrying_steps_chain_the_final_state_into_the_next_step(backend):
    """Step i+1 starts from step i's final state at step i's parameters (before its update)."""
    state = backend.init_state(CFG, lb.init_params(CFG, 0), OPT)
    ref = NumpyReference()
    assert backend.carried_state(state) is None
    carried = None
    for seed in range(3):
        x, y = batch(seed)
        before = backend.get_params(state)
        loss = backend.train_step(state, x, y, carry_state=True)
        extra = {} if carried is None else {"initial_state": carried}
        expected_loss, _ = ref.loss_and_grads(CFG, before, x, y, **extra)
        _, carried = ref.forward(CFG, before, x, return_state=True, **extra)
        got = backend.carried_state(state)
        assert abs(loss - expected_loss) <= 1e-12 * abs(expected_loss)
        for a, b in zip(got, carried):
            assert a.shape == (2, 3, 4) and np.max(np.abs(a - b)) <= 1e-12


def test_the_default_step_and_the_references_own_carry_the_same_bits():
    runs = []
    for backend in (NumpyReference(), PluginStyle()):
        state = backend.init_state(CFG, lb.init_params(CFG, 0), OPT)
        losses = [backend.train_step(state, *batch(seed), carry_state=True) for seed in range(3)]
        runs.append((losses, backend.get_params(state), backend.carried_state(state)))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))


def test_a_fused_step_carries_the_same_bits_with_and_without_a_gradient_hook():
    numba = lb.get_backend("numba")
    runs = []
    for hook in (None, lambda grad, loss: loss):
        state = numba.init_state(CFG, lb.init_params(CFG, 0), OPT)
        state.gradient_hook = hook
        losses = [numba.train_step(state, *batch(seed), carry_state=True) for seed in range(3)]
        runs.append((losses, numba.carried_state(state)))
    assert runs[0][0] == runs[1][0] and all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_a_reset_starts_from_zeros_and_a_restore_from_the_given_state():
    ref = NumpyReference()
    params = lb.init_params(CFG, 0)
    x, y = batch()
    h0 = tuple(np.full((2, 3, 4), 0.3) for _ in range(2))
    state = ref.init_state(CFG, params, OPT)
    ref.set_carried_state(state, h0)
    h0[0][...] = 0.0  # the backend keeps a copy
    assert ref.train_step(state, x, y, carry_state=True) == ref.loss_and_grads(
        CFG, params, x, y, initial_state=tuple(np.full((2, 3, 4), 0.3) for _ in range(2)))[0]
    ref.set_carried_state(state, None)
    assert ref.carried_state(state) is None
    fresh = ref.init_state(CFG, ref.get_params(state), OPT)
    assert ref.train_step(state, x, y, carry_state=True) == ref.loss_and_grads(CFG, ref.get_params(fresh), x, y)[0]


def test_initial_state_and_carry_state_together_are_refused():
    ref = NumpyReference()
    state = ref.init_state(CFG, lb.init_params(CFG, 0), OPT)
    x, y = batch()
    with pytest.raises(ConfigError, match="initial_state or carry_state=True, not both"):
        ref.train_step(state, x, y, initial_state=(np.zeros((2, 3, 4)),) * 2, carry_state=True)
    assert state.step == 0


def test_a_backend_without_states_refuses_carry_state_by_name():
    backend = NoStates()
    state = backend.init_state(CFG, lb.init_params(CFG, 0), OPT)
    with pytest.raises(UnsupportedError, match="'test-no-states' does not take carry_state"):
        backend.train_step(state, *batch(), carry_state=True)
    with pytest.raises(UnsupportedError, match="does not carry a state"):
        backend.stepper(CFG, lb.init_params(CFG, 0))


def test_a_carried_state_of_other_rows_is_refused():
    ref = NumpyReference()
    state = ref.init_state(CFG, lb.init_params(CFG, 0), OPT)
    ref.train_step(state, *batch(B=3), carry_state=True)
    with pytest.raises(ShapeError, match="carried state holds 3 rows, x has 2"):
        ref.train_step(state, *batch(B=2), carry_state=True)


@pytest.mark.parametrize("value, error, match", [
    (np.zeros((2, 3, 4)), ShapeError, "must be a pair"),
    ((np.zeros((2, 3, 5)), np.zeros((2, 3, 5))), ShapeError, "carried state h has shape"),
    ((np.zeros((1, 3, 4)), np.zeros((1, 3, 4))), ShapeError, "carried state h has shape"),
    ((np.zeros((2, 3, 4)), np.zeros((2, 2, 4))), ShapeError, "carried state c has shape"),
    ((np.zeros((2, 3, 4), np.float32),) * 2, DTypeError, "carried state h has dtype float32"),
    ((np.zeros((2, 3, 4)), np.full((2, 3, 4), np.inf)), NonFiniteError, "carried state c contains 24"),
])
def test_a_bad_carried_state_is_refused(value, error, match):
    ref = NumpyReference()
    state = ref.init_state(CFG, lb.init_params(CFG, 0), OPT)
    with pytest.raises(error, match=match):
        ref.set_carried_state(state, value)
    assert ref.carried_state(state) is None


def test_a_backend_that_ignores_return_state_is_named():
    class Forgets(NumpyReference):
        name = "test-forgets"

        def _train_step(self, state, x, y, return_state=False, **sequences):
            return super()._train_step(state, x, y, **sequences)

    backend = Forgets()
    state = backend.init_state(CFG, lb.init_params(CFG, 0), OPT)
    with pytest.raises(BackendError, match="'test-forgets' returned float from a training step with return_state"):
        backend.train_step(state, *batch(), carry_state=True)


def test_the_kit_fails_a_backend_that_does_not_carry():
    """The sequences check demands the chain: a backend that starts every carrying step from
    zeros fails it."""
    from lstmbench.testing import run_check

    class StartsFromZeros(NumpyReference):
        name = "test-starts-from-zeros"

        def _train_step(self, state, x, y, return_state=False, **sequences):
            if return_state:
                sequences.pop("initial_state", None)
            return super()._train_step(state, x, y, return_state=return_state, **sequences)

    run_check(NumpyReference(), "sequences", "float64", max_examples=3, seed=0)
    with pytest.raises(AssertionError, match="carry the state"):
        run_check(StartsFromZeros(), "sequences", "float64", max_examples=3, seed=0)


# -- generation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_a_stepper_gives_the_outputs_of_one_forward_pass(name):
    backend = lb.get_backend(name)
    params = lb.init_params(CFG, 0)
    x, _ = batch(T=7, B=2)
    whole = backend.forward(CFG, params, x)
    step = backend.stepper(CFG, params)
    parts = [step(x[:, :3]), step(x[:, 3:4]), step(x[:, 4:])]
    assert np.max(np.abs(np.concatenate(parts, axis=1) - whole)) <= 1e-12
    _, (h, c) = backend.forward(CFG, params, x, return_state=True)
    assert np.max(np.abs(step.state[0] - h)) <= 1e-12 and np.max(np.abs(step.state[1] - c)) <= 1e-12
    with pytest.raises(ShapeError, match="holds 2 rows, x has 1"):
        step(x[:1, :1])


def test_generation_steps_equal_the_window_rerun_within_the_window():
    """With the prime and the sample inside one window, stepping from the carried state and
    running the window again see the same context: the same symbols come out."""
    cfg = replace(CFG, input_size=5, output_size=5)
    params = lb.init_params(cfg, 3)
    meta = {"vocab": [lbdata.UNK, "a", "b", "c", "d"], "seq_len": 64}
    stepped = experiment.generate_text(NumpyReference(), cfg, params, meta, "abca", 40, seed=5)
    rerun = experiment.generate_text(replace_capabilities(NumpyReference()), cfg, params, meta, "abca", 40, seed=5)
    assert stepped.text == rerun.text and len(stepped.text) == 44 and stepped.symbols == 40
    assert stepped.per_second > 0


def replace_capabilities(backend):
    """The backend as one without states (generation falls back to running the window again)."""
    backend.capabilities = lb.Capabilities()
    return backend


# -- the stream layout ------------------------------------------------------------------------


def test_streams_are_contiguous_and_minibatch_k_is_chunk_k_of_every_stream():
    text = "".join(chr(ord("A") + i % 26) + chr(ord("a") + i // 26 % 26) for i in range(600))  # no repeats nearby
    B, T = 4, 6
    data = lbdata.make_stream_dataset(text, T, B)
    train = text[:960]  # 80 % of 1200
    S = len(train) // B
    K = (S - 1) // T
    assert data.streams == B and len(data.train.x) == K * B
    ids = data.vocab.encode(train)
    for k in range(K):
        for b in range(B):
            row = k * B + b
            start = b * S + k * T
            assert np.array_equal(data.train.x[row].argmax(-1), ids[start : start + T])
            assert np.array_equal(data.train.y[row], ids[start + 1 : start + T + 1])


@pytest.mark.parametrize("length, part", [(8 * 4 * 11, "val"), (100, "train")])
def test_a_text_too_short_for_its_streams_is_named(length, part):
    with pytest.raises(DataError, match=f"the {part} part of the text has .* too few for 8 streams .* needs 88"):
        lbdata.make_stream_dataset("ab" * (length // 2), 10, 8)


# -- stateful training ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streams():
    text = lbdata.load_text("shakespeare")[:4000]
    data = lbdata.make_stream_dataset(text, 8, 4)
    cfg = lb.ModelConfig(data.vocab.size, 6, data.vocab.size, loss="xent", many_to_many=True, dtype="float64")
    return cfg, (data.train.x, data.train.y), (data.val.x, data.val.y)


class Recorder(NumpyReference):
    """Records the carried state each step starts from; raises Ctrl-C before step ``stop_at``."""

    def __init__(self, stop_at=None):
        super().__init__()
        self.starts, self.stop_at = [], stop_at

    def train_step(self, state, x, y, **kwargs):
        if len(self.starts) + 1 == self.stop_at:
            raise KeyboardInterrupt
        self.starts.append(self.carried_state(state))
        return super().train_step(state, x, y, **kwargs)


def run_stateful(streams, out=None, backend=None, epochs=2, resume=None):
    cfg, train_data, val_data = streams
    run = RunConfig(epochs=epochs, batch_size=4, seed=1, out_dir=out, progress=False, stateful=True)
    return train(backend or NumpyReference(), cfg, OPT, lb.init_params(cfg, 0), train_data, val_data, run,
                 resume=resume)


def test_a_stateful_run_carries_the_state_in_stream_order_and_resets_it_each_epoch(streams):
    recorder = Recorder()
    run_stateful(streams, backend=recorder)
    chunks = len(streams[1][0]) // 4
    assert len(recorder.starts) == 2 * chunks
    firsts = [recorder.starts[0], recorder.starts[chunks]]
    assert all(s is None for s in firsts)  # every epoch starts from zeros
    assert all(s is not None and s[0].shape == (1, 4, 6) for i, s in enumerate(recorder.starts) if i % chunks)


def test_a_stateful_run_equals_the_hand_written_truncated_bptt(streams):
    cfg, (x, y), _ = streams
    result = run_stateful(streams, epochs=1)
    ref = NumpyReference()
    state = ref.init_state(cfg, lb.init_params(cfg, 0), OPT)
    carried = None
    for k in range(0, len(x), 4):  # chunk k of the 4 streams, the last final state as the initial state
        params = ref.get_params(state)
        extra = {} if carried is None else {"initial_state": carried}
        _, carried = ref.forward(cfg, params, x[k : k + 4], return_state=True, **extra)
        ref.train_step(state, x[k : k + 4], y[k : k + 4], **extra)
    assert all(np.array_equal(result.last_params[k], v) for k, v in ref.get_params(state).items())


def test_a_stateful_run_resumes_bit_for_bit_with_its_carried_state(streams, tmp_path):
    chunks = len(streams[1][0]) // 4
    stopped = run_stateful(streams, tmp_path / "b", backend=Recorder(stop_at=chunks + 5))
    assert stopped.stop_reason == "interrupted"
    saved = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)
    assert saved.meta["progress"]["batch"] == 4 and saved.carried is not None
    assert saved.carried[0].shape == (1, 4, 6) and np.any(saved.carried[0] != 0)
    resumed = run_stateful(streams, tmp_path / "b", resume=saved)
    straight = run_stateful(streams, tmp_path / "a")
    assert all(np.array_equal(resumed.last_params[k], straight.last_params[k]) for k in straight.last_params)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in straight.history]
    # the comparison can fail: the same resume from a zero carried state ends elsewhere
    saved.carried = tuple(np.zeros_like(s) for s in saved.carried)
    (tmp_path / "b" / LAST_CHECKPOINT).unlink()
    wrong = run_stateful(streams, tmp_path / "b", resume=saved)
    assert not np.array_equal(wrong.last_params["l0.W_h"], straight.last_params["l0.W_h"])


def test_a_mid_epoch_checkpoint_without_its_carried_state_is_refused(streams, tmp_path):
    chunks = len(streams[1][0]) // 4
    run_stateful(streams, tmp_path, backend=Recorder(stop_at=chunks + 5))
    saved = load_checkpoint(tmp_path / LAST_CHECKPOINT)
    saved.carried = None
    with pytest.raises(lb.CheckpointError, match="holds no carried state"):
        run_stateful(streams, tmp_path, resume=saved)


def test_a_stateful_run_needs_a_backend_with_states_and_whole_chunks(streams):
    with pytest.raises(UnsupportedError, match="'test-no-states' does not take lengths or states"):
        run_stateful(streams, backend=NoStates())
    cfg, (x, y), val = streams
    run = RunConfig(epochs=1, batch_size=4, progress=False, stateful=True)
    with pytest.raises(ConfigError, match="whole chunks of its 4 streams .* got 5 rows"):
        train(NumpyReference(), cfg, OPT, lb.init_params(cfg, 0), (x, y), (val[0][:5], val[1][:5]), run)


# -- the command line ---------------------------------------------------------------------------


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(lbdata.load_text("shakespeare")[:3000])
    return path


STATEFUL = ["--stateful", "--batch-size", "4", "--seq-len", "8", "--hidden", "6", "--dtype", "float64", "--quiet",
            "--backend", "numpy"]


def test_train_stateful_then_resume_continues_bit_for_bit(text_file, tmp_path, capsys):
    base = ["train", "--text-file", str(text_file), *STATEFUL]
    code, out, err = run_cli(capsys, *base, "--epochs", "3", "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "stateful: 4 streams, each 74 chunk(s) of 8 symbols per epoch" in err and "cross-entropy" in out
    assert run_cli(capsys, *base, "--epochs", "1", "--out", str(tmp_path / "b"))[0] == 0
    code, _, err = run_cli(capsys, "train", "--resume", "--epochs", "3", "--out", str(tmp_path / "b"), "--quiet")
    assert code == 0, err
    a, b = load_checkpoint(tmp_path / "a" / "last.npz"), load_checkpoint(tmp_path / "b" / "last.npz")
    assert a.meta["stateful"] is True and a.meta["run"]["stateful"] is True
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "a" / "best.npz"), "--prime", "First", "--length", "30",
                             "--backend", "numpy")
    assert code == 0 and out.startswith("First") and len(out.rstrip("\n")) == 35
    assert "sampled 30 symbol(s) in" in err and "symbols/s on numpy, one step per symbol from the carried state" in err


@pytest.mark.parametrize("flags, takes", [(["--stateful"], "states"), (["--per-line"], "lengths"),
                                           (["--series-column", "store"], "lengths")])
def test_a_backend_without_states_is_refused_before_anything_is_written(text_file, tmp_path, capsys, flags, takes):
    data = ["--text-file", str(text_file)]
    if flags[0] == "--series-column":
        (tmp_path / "p.csv").write_text("store,v\n" + "".join(f"{'ab'[i % 2]},{i}\n" for i in range(40)))
        data = ["--csv", str(tmp_path / "p.csv")]
    lb.register_backend(NoStates())
    try:
        code, _, err = run_cli(capsys, "train", *data, *flags, "--backend", "test-no-states", "--out",
                               str(tmp_path / "o"))
    finally:
        lb.unregister_backend("test-no-states")
    assert code == 2 and f"{flags[0]} needs a backend that takes {takes}" in err and "'test-no-states'" in err
    assert "use --backend" in err and "numpy" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nile", "--stateful"], "--stateful does not apply to the nile series"),
    (["--text-file", "TEXT", "--stateful", "--batch-size", "64", "--seq-len", "64"],
     "the train part of the text has 2400 characters (of 3000), too few for 64 streams"),
    (["--text-file", "TEXT", "--stateful", "--per-line"], "pass one of them"),
])
def test_bad_stateful_runs_are_one_line_errors(text_file, tmp_path, capsys, argv, message):
    argv = [str(text_file) if a == "TEXT" else a for a in argv]
    code, _, err = run_cli(capsys, "train", *argv, "--backend", "numpy", "--out", str(tmp_path / "o"))
    assert code == 2 and message in err and not (tmp_path / "o").exists()


def test_a_checkpoint_holds_a_carried_state_of_at_most_its_streams(tmp_path):
    from lstmbench.training.checkpoint import save_checkpoint

    params, state = lb.init_params(CFG, 0), tuple(np.full((2, 3, 4), 0.5) for _ in range(2))
    save_checkpoint(tmp_path / "ok.npz", CFG, params, meta={"run": {"batch_size": 3}}, carried=state)
    loaded = load_checkpoint(tmp_path / "ok.npz")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.carried, state))
    big = tuple(np.zeros((2, 300, 4)) for _ in range(2))  # more rows than the run's streams: tampered
    save_checkpoint(tmp_path / "big.npz", CFG, params, meta={"run": {"batch_size": 3}}, carried=big)
    with pytest.raises(lb.CheckpointError, match="array 'state/h' holds"):
        load_checkpoint(tmp_path / "big.npz")
    save_checkpoint(tmp_path / "none.npz", CFG, params, carried=state)  # no run: no carried state belongs there
    with pytest.raises(lb.CheckpointError, match="holds an array 'state/"):
        load_checkpoint(tmp_path / "none.npz")
