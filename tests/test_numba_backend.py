"""The rule by which the Numba backend shares a step between threads: batch shards, or hidden
units for a batch of few rows. The kit runs on its default from tests/test_conformance.py like
on every registered backend, and on the hidden-unit plan from tests/test_hidden_units.py."""

import numpy as np
import pytest

import lstmbench as lb

pytest.importorskip("numba")
from lstmbench_backends.numba_cpu import UNITS_ROWS, NumbaThreads, shares_units  # noqa: E402


def test_auto_shares_hidden_units_where_w_h_outgrows_l2_and_its_parts_do_not():
    l2 = 1 << 20  # 1 MiB, as on the Zen 5 it was measured on
    # float32 H=256: W_h is 1 MiB, a part of 2 is 512 KiB: units, up to UNITS_ROWS rows per thread
    assert shares_units("auto", 1, 256, 2, 4, l2) and shares_units("auto", 2 * UNITS_ROWS, 256, 2, 4, l2)
    assert not shares_units("auto", 2 * UNITS_ROWS + 1, 256, 2, 4, l2)
    assert not shares_units("auto", 1, 128, 2, 4, l2)  # W_h fits L2 already
    assert not shares_units("auto", 1, 512, 2, 4, l2)  # a part (2 MiB) does not fit either
    assert not shares_units("auto", 1, 256, 2, 8, l2)  # float64: a part is all of L2
    assert not shares_units("auto", 1, 256, 1, 4, l2)  # one thread
    assert not shares_units("auto", 1, 256, 2, 4, 0)  # L2 unknown
    assert shares_units("units", 64, 8, 2, 4, 0) and not shares_units("shards", 1, 256, 2, 4, l2)
    with pytest.raises(ValueError, match="parallel"):
        shares_units("wavefront", 1, 256, 2, 4, l2)


def test_the_plan_run_is_reported():
    backend = NumbaThreads()
    backend.set_threads(2)
    cfg = lb.ModelConfig(1, 8, 1)
    backend.forward(cfg, lb.init_params(cfg), np.zeros((1, 2, 1)))
    assert backend.last_plan == "shards"  # H=8: W_h fits any L2
    backend.parallel = "units"
    backend.forward(cfg, lb.init_params(cfg), np.zeros((1, 2, 1)))
    assert backend.runtime_info()["parallel"] == "units: units last"
