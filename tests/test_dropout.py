"""Dropout as design.md section 9 defines it, in the reference: the hash, the kept fraction and
scaling, where the masks apply, that the reference's gradient is the gradient of its masked
forward, and that a data-parallel split draws the one-process masks. Every other backend is held
to the reference with dropout by the conformance kit's dropout check."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lstmbench import ModelConfig, init_params, load_backend
from lstmbench.config import DropoutDraw, fmix32
from lstmbench.errors import ConfigError, UnsupportedError
from lstmbench_backends.reference import reference as ref

M32 = 0xFFFFFFFF


def scalar_fmix32(h: int) -> int:
    """MurmurHash3's fmix32, written out on Python ints (an independent reading of the definition)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def test_fmix32_is_murmurhash3s_finaliser_on_ints_and_arrays():
    assert fmix32(0) == 0  # a fixed point of the finaliser
    assert fmix32(1) == 0x514E28B7  # MurmurHash3's published fmix32(1)
    values = np.array([0, 1, 2, 0x9E3779B9, M32, 123456789], dtype=np.uint32)
    assert [int(v) for v in fmix32(values)] == [scalar_fmix32(int(v)) for v in values]
    assert fmix32(values).dtype == np.uint32


def mask_by_hand(cfg: ModelConfig, draw: DropoutDraw, site: int, B: int, T: int) -> np.ndarray:
    """(B, T, H) multipliers, one element at a time, from the text of design.md section 9."""
    k = scalar_fmix32(draw.seed ^ scalar_fmix32(draw.step ^ scalar_fmix32((site + 0x9E3779B9) & M32)))
    threshold = int(np.floor(cfg.dropout * 2**32))
    out = np.zeros((B, T, cfg.hidden_size))
    for b in range(B):
        for t in range(T):
            for j in range(cfg.hidden_size):
                r = scalar_fmix32(((((draw.first_row + b) * T + t) * cfg.hidden_size + j) & M32) ^ k)
                out[b, t, j] = 1.0 / (1.0 - cfg.dropout) if r >= threshold else 0.0
    return out.astype(cfg.dtype)


@pytest.mark.parametrize("first_row", [0, 5])
def test_the_reference_masks_are_the_definition(first_row):
    cfg = ModelConfig(2, 4, 1, num_layers=3, dropout=0.3)
    draw = DropoutDraw(seed=7, step=2, first_row=first_row)
    B, T = 3, 4
    steps = np.broadcast_to(np.arange(T), (B, T))
    for site in (1, 2, 3):
        assert np.array_equal(ref.dropout_multiplier(cfg, draw, site, T, steps), mask_by_hand(cfg, draw, site, B, T))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_kept_fraction_is_one_minus_p_within_its_binomial_spread(p):
    cfg = ModelConfig(1, 64, 1, num_layers=2, dropout=p)
    B, T = 64, 32
    n = B * T * cfg.hidden_size
    steps = np.broadcast_to(np.arange(T), (B, T))
    for seed, step, site in ((0, 1, 1), (1, 1, 1), (0, 2, 1), (0, 1, 2)):
        mask = ref.dropout_multiplier(cfg, DropoutDraw(seed, step), site, T, steps)
        kept = np.count_nonzero(mask) / n
        assert abs(kept - (1 - p)) <= 5 * np.sqrt(p * (1 - p) / n), (seed, step, site, kept)
        assert set(np.unique(mask)) == {0.0, np.float64(1 / (1 - p))}
    # other seeds, steps and sites draw other masks (independent: overlap about (1 - p)^2)
    a = ref.dropout_multiplier(cfg, DropoutDraw(0, 1), 1, T, steps) > 0
    for other in (DropoutDraw(1, 1), DropoutDraw(0, 2)):
        b = ref.dropout_multiplier(cfg, other, 1, T, steps) > 0
        assert abs(np.mean(a & b) - (1 - p) ** 2) <= 5 * np.sqrt((1 - p) ** 2 / n)


def test_kept_values_are_scaled_in_the_models_dtype():
    cfg = ModelConfig(1, 8, 1, num_layers=2, dropout=0.3, dtype="float32")
    mask = ref.dropout_multiplier(cfg, DropoutDraw(3, 1), 1, 5, np.broadcast_to(np.arange(5), (4, 5)))
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) == {np.float32(0), np.float32(1 / 0.7)}


def model_and_batch(num_layers=2, many_to_many=False, loss="mse", p=0.4, B=5, T=6, seed=0):
    cfg = ModelConfig(3, 5, 2, num_layers=num_layers, loss=loss, many_to_many=many_to_many, dropout=p)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, 3))
    lead = (B, T) if many_to_many else (B,)
    y = rng.standard_normal(lead + (2,)) if loss == "mse" else rng.integers(0, 2, lead)
    return cfg, init_params(cfg, seed), x, y


@pytest.mark.parametrize("num_layers,many_to_many", [(1, False), (2, True), (3, False)])
def test_the_reference_gradient_is_the_gradient_of_its_masked_loss(num_layers, many_to_many):
    """Central differences of the masked loss (the masks stay fixed: they do not depend on the
    parameters) agree with loss_and_grads with the same draw."""
    cfg, params, x, y = model_and_batch(num_layers, many_to_many)
    draw, lengths = DropoutDraw(11, 4), np.array([6, 2, 4, 1, 6])
    _, grads = ref.loss_and_grads(cfg, params, x, y, lengths, dropout=draw)
    rng = np.random.default_rng(1)
    for name in params:
        for _ in range(3):
            index = tuple(rng.integers(0, n) for n in params[name].shape)
            up, down = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in params.items()}
            up[name][index] += 1e-6
            down[name][index] -= 1e-6
            numeric = (ref.loss_and_grads(cfg, up, x, y, lengths, dropout=draw)[0]
                       - ref.loss_and_grads(cfg, down, x, y, lengths, dropout=draw)[0]) / 2e-6
            assert abs(numeric - grads[name][index]) <= 1e-7 + 1e-6 * abs(numeric), (name, index)


def test_dropout_changes_training_steps_only():
    cfg, params, x, y = model_and_batch(num_layers=2, many_to_many=True)
    plain = replace(cfg, dropout=0.0)
    numpy = load_backend("numpy")
    assert np.array_equal(numpy.forward(cfg, params, x), numpy.forward(plain, params, x))
    without = numpy.loss_and_grads(cfg, params, x, y)  # no draw: no masks
    assert without[0] == numpy.loss_and_grads(plain, params, x, y)[0]
    with_masks = numpy.loss_and_grads(cfg, params, x, y, dropout=DropoutDraw(0, 1))
    assert with_masks[0] != without[0]
    # a training step draws the masks of its step: the same step of a run with another seed differs
    losses = []
    for seed in (0, 0, 1):
        from lstmbench import OptimizerConfig

        state = numpy.init_state(cfg, params, OptimizerConfig("sgd", lr=0.1), seed=seed)
        losses.append(numpy.train_step(state, x, y))
    assert losses[0] == losses[1] == with_masks[0] and losses[2] != losses[0]


def test_only_the_head_input_is_masked_in_a_one_layer_model():
    """One layer: site 1 (= L) is the head's input, read at each row's last step."""
    cfg, params, x, y = model_and_batch(num_layers=1, many_to_many=False)
    draw, lengths = DropoutDraw(2, 3), np.array([6, 3, 1, 6, 2])
    y_hat, caches = ref.forward_with_caches(cfg, params, x, lengths, dropout=draw)
    last = (lengths - 1)[:, None]
    mask = ref.dropout_multiplier(cfg, draw, 1, x.shape[1], last)[:, 0]
    h_last = caches[0].h[:, -1]  # each row's h after its last step
    assert np.allclose(y_hat, (h_last * mask) @ params["head.W"] + params["head.b"], rtol=0, atol=1e-15)
    unmasked, _ = ref.forward_with_caches(cfg, params, x, lengths)
    assert np.array_equal(unmasked, h_last @ params["head.W"] + params["head.b"])


def test_halves_of_a_batch_with_their_first_rows_are_the_batch():
    cfg, params, x, y = model_and_batch(num_layers=3, many_to_many=False, B=6)
    draw = DropoutDraw(5, 9)
    loss, grads = ref.loss_and_grads(cfg, params, x, y, dropout=draw)
    parts = [ref.loss_and_grads(cfg, params, x[rows], y[rows], dropout=replace(draw, first_row=rows.start))
             for rows in (slice(0, 2), slice(2, 6))]
    assert np.isclose(loss, (2 * parts[0][0] + 4 * parts[1][0]) / 6, rtol=1e-13)
    for name in grads:
        assert np.allclose(grads[name], (2 * parts[0][1][name] + 4 * parts[1][1][name]) / 6, rtol=1e-12, atol=1e-15)
    wrong = ref.loss_and_grads(cfg, params, x[2:], y[2:], dropout=draw)  # first row 0 again: other masks
    assert not np.isclose(parts[1][0], wrong[0], rtol=1e-12)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_a_dropout_outside_0_1_is_refused(p):
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
        ModelConfig(1, 2, 1, dropout=p)


def test_a_backend_without_dropout_refuses_it_by_name():
    from lstmbench import Backend, Capabilities, OptimizerConfig

    class NoDropout(Backend):
        name = "nodrop"
        capabilities = Capabilities()

    cfg, params, x, y = model_and_batch()
    with pytest.raises(UnsupportedError, match="'nodrop' does not train with dropout"):
        NoDropout().init_state(cfg, params, OptimizerConfig())
    with pytest.raises(UnsupportedError, match="does not train with dropout"):
        NoDropout().loss_and_grads(cfg, params, x, y, dropout=DropoutDraw(0, 1))
