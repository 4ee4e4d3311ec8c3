"""The rule by which the Numba backend shares a step between threads: batch shards, or hidden
units for a batch of few rows. The kit runs on its default from tests/test_conformance.py like
on every registered backend, and on the hidden-unit plan from tests/test_hidden_units.py."""

import numpy as np
import pytest

import lstmbench as lb

pytest.importorskip("numba")
from lstmbench_backends.numba_cpu import UNITS_ROWS, NumbaThreads, Plan, work_plan  # noqa: E402


def units(B, H, itemsize, l2, parallel="auto"):
    return work_plan(parallel, B, H, itemsize, l2).units


def test_auto_shares_hidden_units_where_w_h_outgrows_l2_and_its_parts_do_not():
    l2 = 1 << 20  # 1 MiB, as on the Zen 5 it was measured on
    # float32 H=256: W_h is 1 MiB, a part of 2 is 512 KiB: units, up to UNITS_ROWS rows
    assert units(1, 256, 4, l2) and units(UNITS_ROWS, 256, 4, l2)
    assert work_plan("auto", 1, 256, 4, l2) == Plan(rows=1, parts=2)
    assert not units(UNITS_ROWS + 1, 256, 4, l2)
    assert not units(1, 128, 4, l2)  # W_h fits L2 already
    assert not units(1, 512, 4, l2)  # a part of two (2 MiB) does not fit either
    assert not units(1, 256, 8, l2)  # float64: a part of two is all of L2
    assert not units(1, 256, 4, 0)  # L2 unknown
    assert units(64, 8, 4, 0, "units") and not units(1, 256, 4, l2, "shards")
    with pytest.raises(ValueError, match="parallel"):
        work_plan("wavefront", 1, 256, 4, l2)


def test_batch_shards_depend_on_the_shape_alone():
    """The same shards for any thread count (there is no thread count to pass): at least two,
    of at most 64 rows."""
    assert work_plan("auto", 32, 32, 4, 0) == Plan(rows=16, parts=1)
    assert work_plan("auto", 100, 32, 4, 0) == Plan(rows=50, parts=1)
    assert work_plan("auto", 256, 512, 4, 0) == Plan(rows=64, parts=1)
    assert work_plan("auto", 2, 32, 8, 0) == Plan(rows=1, parts=1)
    assert work_plan("auto", 1, 32, 8, 0) == Plan(rows=1, parts=1)


def test_the_plan_run_is_reported():
    backend = NumbaThreads()
    backend.set_threads(2)
    cfg = lb.ModelConfig(1, 8, 1)
    backend.forward(cfg, lb.init_params(cfg), np.zeros((1, 2, 1)))
    assert backend.last_plan == "shards"  # H=8: W_h fits any L2
    backend.parallel = "units"
    backend.forward(cfg, lb.init_params(cfg), np.zeros((1, 2, 1)))
    assert backend.runtime_info()["parallel"] == "units: units last"
