"""Learning-rate schedules with torch's semantics (design.md section 10), computed on the host.

The training loop asks :meth:`LRSchedule.lr` for the rate of each optimizer step and hands it to
the backend as one number (TrainState.lr); reduce-on-plateau also hears each epoch's validation
loss (:meth:`LRSchedule.end_epoch`). What torch's schedulers would give:

* ``constant``: the optimizer's rate; with ``warmup_steps`` W, torch's LinearLR with
  start_factor 1/(W+1) first: step k (from 1) takes lr * k / (W+1) until step W+1.
* ``cosine``: the warm-up above, then CosineAnnealingLR over the rest of the run's steps down
  to ``lr_min`` (torch's SequentialLR of the two, milestone W).
* ``step``: StepLR stepped once per epoch: lr * gamma ** (epoch // step_size).
* ``plateau``: ReduceLROnPlateau(mode "min", factor, patience, threshold 1e-4 relative,
  min_lr=lr_min) stepped with each epoch's validation loss.

Only the plateau schedule has a state of its own (its rate, best loss, bad epochs): the others
are functions of the step number, which the optimizer state already holds. ``state()`` goes
into a checkpoint and ``load()`` takes it back, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from lstmbench.errors import ConfigError

SCHEDULES = ("constant", "cosine", "step", "plateau")

#: which schedules each setting applies to (a flag given for another schedule is an error)
APPLIES_TO = {"warmup_steps": ("constant", "cosine"), "lr_min": ("cosine", "plateau"), "step_size": ("step",),
              "gamma": ("step",), "plateau_patience": ("plateau",), "plateau_factor": ("plateau",)}
#: the settings' values when not given (torch's defaults, where it has one)
DEFAULTS = {"warmup_steps": 0, "lr_min": 0.0, "step_size": None, "gamma": 0.1, "plateau_patience": 10,
            "plateau_factor": 0.1}
PLATEAU_THRESHOLD = 1e-4  # torch's: a loss must beat the best by this fraction to count as better
PLATEAU_EPS = 1e-8  # torch's: a reduction smaller than this is not made


@dataclass(frozen=True)
class ScheduleConfig:
    """A schedule and its settings; a setting left None takes DEFAULTS. A setting given for a
    schedule it does not apply to (APPLIES_TO) is refused, naming the train flag."""

    kind: str = "constant"
    warmup_steps: int | None = None
    lr_min: float | None = None
    step_size: int | None = None  # epochs
    gamma: float | None = None
    plateau_patience: int | None = None  # epochs
    plateau_factor: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"unknown learning-rate schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        wrong = [name for name, kinds in APPLIES_TO.items() if getattr(self, name) is not None and self.kind not in kinds]
        if wrong:
            raise ConfigError("; ".join(f"{_flag(n)} applies to --lr-schedule {' or '.join(APPLIES_TO[n])}, not "
                                        f"{self.kind}" for n in wrong))
        if self.kind == "step" and self.step_size is None:
            raise ConfigError("--lr-schedule step needs --step-size (epochs between reductions)")
        for name in ("warmup_steps", "step_size", "plateau_patience"):
            value = getattr(self, name)
            least = 1 if name == "step_size" else 0
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"{_flag(name)} must be an integer >= {least}, got {value!r}")
        for name, low, high in (("lr_min", 0.0, math.inf), ("gamma", 0.0, 1.0), ("plateau_factor", 0.0, 1.0)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and low <= value < high
                                          and (name == "lr_min" or value > 0)):
                bounds = ">= 0" if name == "lr_min" else "in (0, 1)"
                raise ConfigError(f"{_flag(name)} must be {bounds}, got {value!r}")

    def setting(self, name: str) -> Any:
        value = getattr(self, name)
        return DEFAULTS[name] if value is None else value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "ScheduleConfig":
        known = {f.name for f in fields(cls)}
        if data is not None and (not isinstance(data, dict) or set(data) - known):
            raise ConfigError(f"not a learning-rate schedule: {data!r}")
        return cls(**(data or {}))

    def describe(self) -> str:
        """The schedule in words, for the run's first lines."""
        if self.kind == "constant":
            warm = self.setting("warmup_steps")
            return "constant" + (f" after a {warm}-step linear warm-up" if warm else "")
        if self.kind == "cosine":
            warm = self.setting("warmup_steps")
            return (f"cosine to {self.setting('lr_min'):g}" + (f" after a {warm}-step linear warm-up" if warm else ""))
        if self.kind == "step":
            return f"x{self.setting('gamma'):g} every {self.step_size} epoch(s)"
        low = self.setting("lr_min")
        return (f"x{self.setting('plateau_factor'):g} after {self.setting('plateau_patience')} epoch(s) without a "
                f"better validation loss" + (f", never below {low:g}" if low else ""))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class LRSchedule:
    """The learning rate of every step of one run: ``base_lr`` the optimizer's, the run of
    ``epochs`` epochs of ``steps_per_epoch`` optimizer steps each."""

    def __init__(self, config: ScheduleConfig, base_lr: float, steps_per_epoch: int, epochs: int) -> None:
        self.config, self.base_lr = config, float(base_lr)
        self.steps_per_epoch, self.total_steps = steps_per_epoch, steps_per_epoch * epochs
        warmup = config.setting("warmup_steps")
        if config.kind == "cosine" and warmup >= self.total_steps:
            raise ConfigError(f"--warmup-steps {warmup} leaves no step of the run's {self.total_steps} for the cosine "
                              "decay; use fewer warm-up steps or more epochs")
        self.plateau_lr, self.best, self.bad_epochs = self.base_lr, math.inf, 0

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (counted from 1)."""
        c, i = self.config, step - 1  # i: how many times torch's scheduler has stepped before it
        warmup = c.setting("warmup_steps")
        if c.kind in ("constant", "cosine") and i < warmup:  # LinearLR(start_factor=1/(W+1), total_iters=W)
            return self.base_lr * (1.0 / (warmup + 1) + (1.0 - 1.0 / (warmup + 1)) * i / warmup)
        if c.kind == "constant":
            return self.base_lr
        if c.kind == "cosine":  # CosineAnnealingLR(T_max = the steps after the warm-up, eta_min = lr_min)
            j, span, low = i - warmup, self.total_steps - warmup, c.setting("lr_min")
            return low + (self.base_lr - low) * (1 + math.cos(math.pi * j / span)) / 2
        if c.kind == "step":
            return self.base_lr * c.setting("gamma") ** (i // self.steps_per_epoch // c.step_size)
        return self.plateau_lr

    def end_epoch(self, val_loss: float) -> None:
        """An epoch ended with ``val_loss``: ReduceLROnPlateau.step(val_loss) (others: nothing)."""
        if self.config.kind != "plateau":
            return
        c = self.config
        if val_loss < self.best * (1 - PLATEAU_THRESHOLD):
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > c.setting("plateau_patience"):
            reduced = max(self.plateau_lr * c.setting("plateau_factor"), c.setting("lr_min"))
            if self.plateau_lr - reduced > PLATEAU_EPS:
                self.plateau_lr = reduced
            self.bad_epochs = 0

    def state(self) -> dict:
        """What a checkpoint keeps (JSON): the plateau schedule's position, and the horizon."""
        return {"plateau_lr": self.plateau_lr, "best": self.best if math.isfinite(self.best) else None,
                "bad_epochs": self.bad_epochs, "total_steps": self.total_steps}

    def load(self, saved: dict | None) -> None:
        """Continue from a checkpoint's state(); a cosine schedule must keep its horizon."""
        if not saved:
            return
        if self.config.kind == "cosine" and saved.get("total_steps") != self.total_steps:
            raise ConfigError(f"the run's cosine schedule decays over {saved.get('total_steps')} steps, this run has "
                              f"{self.total_steps}: resume with the run's own --epochs to continue it exactly")
        best = saved.get("best")
        self.plateau_lr, self.bad_epochs = float(saved["plateau_lr"]), int(saved["bad_epochs"])
        self.best = math.inf if best is None else float(best)
