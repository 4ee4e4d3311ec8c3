"""The adaptive thread count (lstmbench.training.threads), driven by a fake clock: a synthetic
machine on which some thread counts are slow, and on which that changes during the run. No
wall-clock time is measured or asserted."""

import json

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.training.loop import RunConfig, train
from lstmbench.training.threads import MAX_BACKOFF, ThreadTuner, candidate_counts


class FakeMachine:
    """A clock that a step on n threads advances by seconds_per_row[n] * rows."""

    def __init__(self, seconds_per_row: dict[int, float]) -> None:
        self.seconds_per_row, self.now = dict(seconds_per_row), 0.0

    def clock(self) -> float:
        return self.now

    def run(self, tuner: ThreadTuner, backend, rows: int = 10) -> int:
        with tuner.step(backend, rows) as threads:
            assert backend.threads == threads  # the step runs on the count chosen
            self.now += self.seconds_per_row[threads] * rows
        return threads


def backend_with_cores(n: int = 4):
    backend = lb.get_backend("numpy")
    backend.set_threads(n)
    return backend


def run_steps(machine, tuner, backend, steps: int) -> list[int]:
    return [machine.run(tuner, backend) for _ in range(steps)]


def test_candidates_are_one_the_powers_of_two_and_the_most():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(6) == [1, 2, 4, 6]
    assert candidate_counts(8) == [1, 2, 4, 8]


def test_a_quiet_machine_runs_on_every_core():
    machine, backend = FakeMachine({1: 1.0, 2: 0.55}), backend_with_cores(2)
    tuner = ThreadTuner(2, clock=machine.clock)
    used = run_steps(machine, tuner, backend, 300)
    assert used[:4] == [2, 2, 2, 2]  # the most first: one uncounted step, then three samples
    assert used.count(1) <= 12  # probing one thread: at the start and at a few rechecks
    assert all(n == 2 for n in used[-20:])
    assert tuner.summary()["steps_at"] == {"1": used.count(1), "2": used.count(2)}


def test_a_descheduled_thread_makes_it_use_fewer():
    """Two threads on a machine with one core taken: 2.5x slower than one."""
    machine, backend = FakeMachine({1: 1.0, 2: 2.5}), backend_with_cores(2)
    tuner = ThreadTuner(2, clock=machine.clock)
    used = run_steps(machine, tuner, backend, 600)
    assert used.count(2) <= 20  # the first samples, then two steps a recheck, at longer and longer waits
    assert all(n == 1 for n in used[-30:])
    cost = sum(machine.seconds_per_row[n] for n in used) / len(used)
    assert cost <= 1.05  # within 5% of always running the best count


def test_it_follows_the_machine_when_the_load_comes_and_goes():
    machine, backend = FakeMachine({1: 1.0, 2: 0.55}), backend_with_cores(2)
    tuner = ThreadTuner(2, recheck_every=32, clock=machine.clock)
    run_steps(machine, tuner, backend, 200)
    machine.seconds_per_row[2] = 2.5  # another job takes a core
    busy = run_steps(machine, tuner, backend, 400)
    assert busy.index(1) <= 3  # left within a few steps: the running count is always measured
    assert all(n == 1 for n in busy[-50:])
    machine.seconds_per_row[2] = 0.55  # the job ends
    quiet = run_steps(machine, tuner, backend, 32 * MAX_BACKOFF + 50)
    back = quiet.index(2)
    assert back <= 32 * MAX_BACKOFF  # found at the next recheck
    after = quiet[back:]
    assert after.count(1) <= 4 and after[-20:] == [2] * 20  # a recheck or two of one thread, no more


def test_more_cores_settle_on_the_fastest_count_between():
    """Four cores, two of them busy: two threads beat one and four."""
    machine, backend = FakeMachine({1: 1.0, 2: 0.6, 4: 1.4}), backend_with_cores(4)
    tuner = ThreadTuner(4, clock=machine.clock)
    used = run_steps(machine, tuner, backend, 300)
    assert all(n == 2 for n in used[-50:])
    assert used.count(2) >= 270


def test_short_batches_and_noise_do_not_make_it_flip():
    """The short last batch of each epoch costs more per row (fixed costs on fewer rows), and
    every tenth step is 30% slow on either count: neither moves a quiet machine off two threads."""
    machine, backend = FakeMachine({1: 1.0, 2: 0.6}), backend_with_cores(2)
    tuner = ThreadTuner(2, clock=machine.clock)
    used = []
    for step in range(700):
        short = step % 7 == 6
        with tuner.step(backend, 5 if short else 32) as threads:
            per_row = machine.seconds_per_row[threads] * (5 if short else 1) * (1.3 if step % 10 == 0 else 1)
            machine.now += per_row * (5 if short else 32)
        used.append(threads)
    assert used.count(1) <= 12


def test_a_failed_step_is_not_counted():
    machine, backend = FakeMachine({1: 1.0, 2: 0.5}), backend_with_cores(2)
    tuner = ThreadTuner(2, clock=machine.clock)
    with pytest.raises(RuntimeError), tuner.step(backend, 10):
        raise RuntimeError("the step failed")
    assert tuner.steps == 0 and backend.threads == 2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="most"):
        ThreadTuner(0)


def test_training_with_a_tuner_gives_the_bits_of_a_fixed_count_and_says_what_it_used(tmp_path):
    """The loop runs every step under the tuner; the same bits as one thread all along."""
    cfg = lb.ModelConfig(2, 8, 1, dtype="float64")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5, 2)), rng.standard_normal((40, 1))
    opt, run = lb.OptimizerConfig("adam", lr=0.01), RunConfig(epochs=3, batch_size=8, progress=False)
    backend = lb.get_backend("c")
    ok, why = backend.availability()
    if not ok:
        pytest.skip(why)
    machine = FakeMachine({1: 1.0, 2: 0.5})
    tuner = ThreadTuner(2, clock=machine.clock)
    with backend.using_threads(2):
        tuned = train(backend, cfg, opt, lb.init_params(cfg, 1), (x, y), (x[:8], y[:8]), run, threads=tuner)
    with backend.using_threads(1):
        fixed = train(backend, cfg, opt, lb.init_params(cfg, 1), (x, y), (x[:8], y[:8]), run)
    for name, value in fixed.last_params.items():
        np.testing.assert_array_equal(tuned.last_params[name], value)
    assert sum(tuned.threads["steps_at"].values()) == 3 * 5 and set(tuned.threads["steps_at"]) == {"1", "2"}
    assert all(record["threads"] in (1, 2) for record in tuned.history)
    json.dumps(tuned.threads)  # goes into metrics.json as it is


# -- the commands ---------------------------------------------------------------------------

NILE = ["train", "--dataset", "nile", "--window", "5", "--hidden", "4", "--quiet", "--backend", "c", "--epochs", "2"]


def run_cli(capsys, *argv):
    from lstmbench.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def two_cores(monkeypatch):
    """A machine of two usable cores, whatever this one has (the tuner needs two counts to pick from)."""
    import lstmbench.bench.run
    import lstmbench.protocol

    for module in (lstmbench.protocol, lstmbench.bench.run, lb):
        monkeypatch.setattr(module, "default_threads", lambda: 2)
    backend = lb.get_backend("c")
    ok, why = backend.availability()
    if not ok:
        pytest.skip(why)


def test_train_adapts_by_default_and_says_so(tmp_path, capsys, two_cores):
    code, _, err = run_cli(capsys, *NILE, "--out", tmp_path)
    assert code == 0, err
    assert "backend c on up to 2 threads (auto)" in err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    threads = metrics["threads"]
    assert threads["mode"] == "auto" and threads["candidates"] == [1, 2]
    assert sum(threads["steps_at"].values()) > 0 and all(h["threads"] in (1, 2) for h in metrics["history"])


def test_a_fixed_thread_count_is_kept(tmp_path, capsys, two_cores):
    code, _, err = run_cli(capsys, *NILE, "--threads", "1", "--out", tmp_path)
    assert code == 0 and "backend c on 1 thread(s)" in err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["threads"] == {"mode": "fixed", "count": 1} and "threads" not in metrics["history"][0]


def test_threads_must_be_a_count_or_auto(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(capsys, *NILE, "--threads", "many", "--out", tmp_path)
    assert "argument --threads: must be auto or a count of at least 1, got 'many'" in capsys.readouterr().err


def test_bench_times_with_the_tuner_when_asked(capsys, two_cores):
    code, out, err = run_cli(capsys, "bench", "--hidden", "8", "--batch", "4", "--steps", "3", "--backends", "c",
                             "--no-torch", "--repeats", "3", "--threads", "auto", "--json", "--quiet")
    assert code == 0, err
    grid = json.loads(out)["grid"]
    assert grid["threads_mode"] == "auto" and grid["threads"] == 2
    (row,) = [r for r in grid["rows"] if r["label"] == "c"]
    assert row["runtime"]["threads_auto"]["mode"] == "auto"
    assert "others_cores" in grid


def test_other_processes_load_is_the_machine_s_cpu_time_less_this_process_s(monkeypatch):
    """OtherLoad's arithmetic, on readings a test sets: 3 CPU seconds in 2 s of wall time, 1 of
    them this process's, is one other core busy."""
    from lstmbench.bench import machine

    readings = {"wall": [10.0, 12.0], "busy": [100.0, 103.0], "own": [5.0, 6.0]}
    monkeypatch.setattr(machine.time, "monotonic", lambda: readings["wall"].pop(0))
    monkeypatch.setattr(machine, "_machine_busy_seconds", lambda: readings["busy"].pop(0))
    monkeypatch.setattr(machine, "_own_cpu_seconds", lambda: readings["own"].pop(0))
    with machine.OtherLoad() as load:
        pass
    assert load.cores == pytest.approx(1.0)
    assert "other processes kept 1.0 of its" in machine.busy_note(load.cores)
    assert machine.busy_note(0.1) is None and machine.busy_note(None) is None


def test_demo_notes_a_busy_machine_under_its_table():
    from lstmbench.cli.demo import format_demo

    row = dict(backend="c", threads="auto 1-2", seconds=0.2, speedup=5.0, test=1.0, naive=2.0, deviation=0.0,
               deviation64=0.0, allowed64=1e-9, verified=True)
    report = {"task": "series", "dtype": "float32", "units": "x", "rows": [row | {"others": 1.0}]}
    assert "note: the machine was busy: other processes kept 1.0 of its" in format_demo(report)
    assert "while the training times of c were measured" in format_demo(report)
    assert "busy" not in format_demo(report | {"rows": [row | {"others": 0.05}]})
