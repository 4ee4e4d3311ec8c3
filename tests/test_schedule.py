"""Learning-rate schedules against torch's schedulers, step by step (design.md section 10)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lstmbench.errors import ConfigError
from lstmbench.training.schedule import LRSchedule, ScheduleConfig

torch = pytest.importorskip("torch")

BASE_LR, STEPS_PER_EPOCH, EPOCHS = 0.1, 7, 6


def torch_optimizer():
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)


def torch_per_step(make) -> list[float]:
    """The rate of each optimizer step under a scheduler stepped after every optimizer step."""
    opt = torch_optimizer()
    scheduler = make(opt)
    rates = []
    for _ in range(STEPS_PER_EPOCH * EPOCHS):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return rates


def ours_per_step(config: ScheduleConfig) -> list[float]:
    schedule = LRSchedule(config, BASE_LR, STEPS_PER_EPOCH, EPOCHS)
    return [schedule.lr(step) for step in range(1, STEPS_PER_EPOCH * EPOCHS + 1)]


def assert_rates(ours, theirs):
    assert len(ours) == len(theirs)
    assert np.allclose(ours, theirs, rtol=1e-12, atol=1e-15), list(zip(ours, theirs))


def warmup_then(opt, warmup, after):
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (warmup + 1), total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, after(opt)], milestones=[warmup])


@pytest.mark.parametrize("warmup", [0, 1, 5])
@pytest.mark.parametrize("lr_min", [0.0, 0.01])
def test_cosine_with_warm_up_is_torchs(warmup, lr_min):
    total = STEPS_PER_EPOCH * EPOCHS

    def cosine(opt):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=lr_min)

    theirs = torch_per_step(lambda opt: warmup_then(opt, warmup, cosine) if warmup else cosine(opt))
    ours = ours_per_step(ScheduleConfig("cosine", warmup_steps=warmup, lr_min=lr_min))
    assert_rates(ours, theirs)
    assert ours[0] < ours[warmup] if warmup else ours[0] == BASE_LR
    assert ours[-1] < 0.01 * BASE_LR + lr_min  # decayed to about lr_min by the end


def test_constant_with_warm_up_is_torchs_linear_lr():
    theirs = torch_per_step(lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 4, total_iters=3))
    ours = ours_per_step(ScheduleConfig("constant", warmup_steps=3))
    assert_rates(ours, theirs)
    assert ours[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1]) and set(ours[4:]) == {BASE_LR}


@pytest.mark.parametrize("step_size,gamma", [(1, 0.5), (2, 0.1)])
def test_step_decay_per_epoch_is_torchs_step_lr(step_size, gamma):
    opt = torch_optimizer()
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    theirs = []
    for _ in range(EPOCHS):  # stepped once per epoch, as torch's examples do
        theirs += [opt.param_groups[0]["lr"]] * STEPS_PER_EPOCH
        opt.step()
        scheduler.step()
    assert_rates(ours_per_step(ScheduleConfig("step", step_size=step_size, gamma=gamma)), theirs)


def test_reduce_on_plateau_is_torchs_epoch_by_epoch():
    losses = [1.0, 0.9, 0.9, 0.89995, 0.95, 0.8, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87]
    opt = torch_optimizer()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1, min_lr=0.02)
    ours = LRSchedule(ScheduleConfig("plateau", plateau_patience=1, plateau_factor=0.5, lr_min=0.02),
                      BASE_LR, STEPS_PER_EPOCH, len(losses))
    for epoch, loss in enumerate(losses):
        assert ours.lr(epoch * STEPS_PER_EPOCH + 1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch
        scheduler.step(loss)
        ours.end_epoch(loss)
    assert ours.plateau_lr == pytest.approx(0.02)  # reduced three times, then held at lr_min


def test_a_restored_plateau_schedule_continues_where_it_was():
    config = ScheduleConfig("plateau", plateau_patience=0)
    first = LRSchedule(config, BASE_LR, 3, 10)
    for loss in (1.0, 1.0):
        first.end_epoch(loss)
    second = LRSchedule(config, BASE_LR, 3, 10)
    second.load(first.state())
    for loss in (1.0, 0.5, 0.6):
        first.end_epoch(loss)
        second.end_epoch(loss)
        assert first.lr(1) == second.lr(1)
    assert first.lr(1) < BASE_LR


def test_a_cosine_schedule_resumed_over_another_horizon_is_refused():
    saved = LRSchedule(ScheduleConfig("cosine"), BASE_LR, 5, 4).state()
    with pytest.raises(ConfigError, match="decays over 20 steps, this run has 30"):
        LRSchedule(ScheduleConfig("cosine"), BASE_LR, 5, 6).load(saved)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="linear"), "unknown learning-rate schedule 'linear'"),
    (dict(kind="step"), "needs --step-size"),
    (dict(kind="constant", step_size=2), "--step-size applies to --lr-schedule step, not constant"),
    (dict(kind="cosine", plateau_patience=3), "--plateau-patience applies to --lr-schedule plateau"),
    (dict(kind="step", step_size=1, warmup_steps=5), "--warmup-steps applies to --lr-schedule constant or cosine"),
    (dict(kind="constant", lr_min=0.1), "--lr-min applies to --lr-schedule cosine or plateau"),
    (dict(kind="step", step_size=0), "--step-size must be an integer >= 1"),
    (dict(kind="step", step_size=1, gamma=1.5), "--gamma must be in"),
    (dict(kind="plateau", plateau_factor=0.0), "--plateau-factor must be in"),
    (dict(kind="cosine", lr_min=-1.0), "--lr-min must be >= 0"),
    (dict(kind="cosine", warmup_steps=-1), "--warmup-steps must be an integer >= 0"),
])
def test_bad_schedules_are_refused_naming_the_flag(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ScheduleConfig(**kwargs)


def test_a_warm_up_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="leaves no step"):
        LRSchedule(ScheduleConfig("cosine", warmup_steps=50), BASE_LR, 5, 10)


def test_the_constant_schedule_is_the_optimizers_rate():
    assert set(ours_per_step(ScheduleConfig())) == {BASE_LR}
    assert math.isclose(LRSchedule(ScheduleConfig("step", step_size=1, gamma=0.5), 1.0, 2, 3).lr(5), 0.25)
