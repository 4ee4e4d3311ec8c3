"""Generation with the state carried (Backend.generate, Backend.stepper): every backend draws
the reference's symbols from the same uniforms, the C kernel's own loop included; its packed
weights are reused only while they are the stepper's; bad arguments are named; and the
generation benchmark verifies and times its rows."""

import json

import numpy as np
import pytest

import lstmbench as lb
from lstmbench.bench.generation import VOCAB, char_model, run_generation, window_generate
from lstmbench.cli import main
from lstmbench.errors import ConfigError, DataError, ShapeError

FAST = ["numba", "c"]


def backend_or_skip(name):
    backend = lb.load_backend(name)
    ok, why = backend.availability()
    if not ok:
        pytest.skip(why)
    return backend


def small_char_model(dtype="float64", layers=2, hidden=24, vocab=7):
    return lb.ModelConfig(vocab, hidden, vocab, layers, "xent", True, dtype)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_backends_draw_the_references_symbols(name, dtype):
    cfg = small_char_model(dtype)
    params = lb.init_params(cfg, seed=3)
    rng = np.random.default_rng(4)
    prime, uniforms = rng.integers(0, 7, 5), rng.random(60)
    expected = lb.get_backend("numpy").generate(cfg, params, prime, uniforms, temperature=0.7)
    backend = backend_or_skip(name)
    for threads in (1, 2):
        with backend.using_threads(threads):
            got = backend.generate(cfg, params, prime, uniforms, temperature=0.7)
        assert got.dtype == np.int64 and np.array_equal(got, expected), (threads, got, expected)


def test_the_reference_generates_as_its_forward_pass_reads():
    """Each drawn symbol is draw_symbol of the logits the whole sequence so far gives."""
    cfg = small_char_model()
    params = lb.init_params(cfg, seed=5)
    rng = np.random.default_rng(6)
    prime, uniforms = rng.integers(0, 7, 4), rng.random(12)
    ref = lb.get_backend("numpy")
    drawn = ref.generate(cfg, params, prime, uniforms)
    ids = list(prime)
    for k, u in enumerate(uniforms):
        logits = ref.forward(cfg, params, np.eye(7)[ids][None])[0, -1]
        assert drawn[k] == lb.protocol.draw_symbol(logits, 1.0, u)
        ids.append(drawn[k])
    # a window as long as the whole text gives the same symbols
    assert np.array_equal(window_generate(ref, cfg, params, prime, uniforms, window=100), drawn)


def test_draws_follow_the_softmax():
    logits = np.log(np.array([0.2, 0.5, 0.3]))
    draw = lb.protocol.draw_symbol
    assert [draw(logits, 1.0, u) for u in (0.0, 0.19, 0.21, 0.69, 0.71, 0.999)] == [0, 0, 1, 1, 2, 2]
    assert draw(logits, 1e-3, 0.0) == 1  # a low temperature takes the most likely symbol


def test_the_c_stepper_reuses_packed_weights_only_while_they_are_its_own():
    cfg = small_char_model(hidden=40)  # several panels of units: the team plan at B = 1
    params, other = lb.init_params(cfg, seed=1), lb.init_params(cfg, seed=2)
    ref, c = lb.get_backend("numpy"), backend_or_skip("c")
    one_hot, x = np.eye(7)[[[1, 4, 2]]], np.eye(7)[[[3]]]
    steps, ref_steps = c.stepper(cfg, params), ref.stepper(cfg, params)
    for k in range(4):
        assert np.allclose(steps(one_hot if k == 0 else x), ref_steps(one_hot if k == 0 else x), rtol=0, atol=1e-12)
        # another model's forward pass on the same workspace in between: the stepper must repack
        assert np.allclose(c.forward(cfg, other, x), ref.forward(cfg, other, x), rtol=0, atol=1e-12)
        dense = np.full((1, 1, 7), 0.3)  # not one-hot: layer 0's W_x must be packed now
        assert np.allclose(steps(dense), ref_steps(dense), rtol=0, atol=1e-12)
        assert np.allclose(c.generate(cfg, other, np.array([1]), np.array([0.5])),
                           ref.generate(cfg, other, np.array([1]), np.array([0.5])))


@pytest.mark.parametrize("bad, error, message", [
    (dict(prime=np.array([7])), DataError, "prime holds symbol ids outside [0, 7)"),
    (dict(prime=np.array([], np.int64)), ShapeError, "prime must be a 1-D array of at least one symbol"),
    (dict(prime=np.array([0.5])), ShapeError, "prime must be a 1-D array"),
    (dict(uniforms=np.array([1.0])), DataError, "uniforms must be a 1-D array of at least one value in [0, 1)"),
    (dict(uniforms=np.array([])), DataError, "uniforms must be"),
    (dict(temperature=0.0), DataError, "temperature must be a positive number"),
    (dict(temperature=float("nan")), DataError, "temperature must be a positive number"),
])
@pytest.mark.parametrize("name", ["numpy", "c"])
def test_bad_generation_arguments_are_named(name, bad, error, message):
    cfg = small_char_model()
    args = dict(prime=np.array([1, 2]), uniforms=np.array([0.5]), temperature=1.0) | bad
    with pytest.raises(error) as info:
        backend_or_skip(name).generate(cfg, lb.init_params(cfg), **args)
    assert message in str(info.value)


def test_generation_needs_a_next_symbol_model():
    cfg = lb.ModelConfig(7, 8, 7, loss="xent")  # many-to-one
    with pytest.raises(ConfigError, match="generate needs a next-symbol model"):
        lb.get_backend("numpy").generate(cfg, lb.init_params(cfg), np.array([1]), np.array([0.5]))


def test_generation_bench_verifies_and_times_every_row(capsys):
    assert main(["bench", "--generation", "--backends", "c", "numpy", "--symbols", "12", "--repeats", "1",
                 "--dtype", "float64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["label"]: r for r in report["rows"]}
    assert {"c", "c window re-run", "numpy"} <= set(rows)
    assert all(r["status"] == "ok" and r["symbols_per_s"] > 0 for r in rows.values())
    assert "over_window_rerun" in report["ratios"]["c"]
    assert report["model"] == f"one-hot {VOCAB} symbols, 2 x 256, B=1, prime 32"
    assert char_model("float32").hidden_size == 256


def test_a_backend_that_draws_other_symbols_is_failed():
    class Wrong(type(lb.get_backend("numpy"))):
        name = "wrong"

        def _generate(self, cfg, params, prime, uniforms, temperature):
            return (super()._generate(cfg, params, prime, uniforms, temperature) + 1) % cfg.input_size

    report = run_generation([], symbols=4, repeats=1, with_torch=False)  # no rows: nothing to time
    assert report["rows"] == []
    from lstmbench.bench.generation import verified_generation

    assert "drawn as" in verified_generation(Wrong(), lambda b, *args: b.generate(*args))


def test_predict_text_is_the_same_from_the_c_loop_and_the_stepwise_one():
    """generate_text runs a backend's own loop (C) where it has one, else steps in Python:
    the same symbols either way."""
    from lstmbench import data as lbdata
    from lstmbench.training import experiment

    cfg = small_char_model(vocab=5)
    params = lb.init_params(cfg, 3)
    meta = {"vocab": [lbdata.UNK, "a", "b", "c", "d"], "seq_len": 64}
    stepped = experiment.generate_text(lb.get_backend("numpy"), cfg, params, meta, "abca", 50, seed=5)
    looped = experiment.generate_text(backend_or_skip("c"), cfg, params, meta, "abca", 50, seed=5)
    assert looped.text == stepped.text and len(looped.text) == 54 and looped.per_second > 0
