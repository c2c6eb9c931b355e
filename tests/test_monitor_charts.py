"""Control charts: p-chart and Laney p′ limits on hand-computed examples, Western-Electric rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fabsight.errors import FabsightError
from fabsight.monitor.charts import p_chart, western_electric


def test_p_chart_limits_vary_with_lot_size() -> None:
    # Baseline: 60 failing of 600 → p̄ = 0.1; a 400-die lot has σ = sqrt(0.1·0.9/400) = 0.015.
    ch = p_chart("fail", ["a", "b", "c", "d"], [10, 20, 30, 80], [100, 200, 300, 400], n_baseline=3, kind="p")
    assert ch.center == pytest.approx(0.1)
    assert ch.ucl[3] == pytest.approx(0.145)
    assert ch.lcl[3] == pytest.approx(0.055)
    assert ch.ucl[0] == pytest.approx(0.1 + 3 * math.sqrt(0.09 / 100))
    assert ch.z[3] == pytest.approx((0.2 - 0.1) / 0.015)
    assert ch.sigma_z == 1.0


def test_laney_widens_limits_by_moving_range_of_baseline_z() -> None:
    # p̄ = 0.2, σ = 0.04 for n = 100; baseline z = -2.5, 2.5, 0 → MR̄ = 3.75 → σz = 3.75 / 1.128.
    ch = p_chart("fail", ["a", "b", "c", "d"], [10, 30, 20, 50], [100] * 4, n_baseline=3, kind="laney")
    sigma_z = 3.75 / 1.128
    assert ch.sigma_z == pytest.approx(sigma_z)
    assert ch.ucl[3] == pytest.approx(0.2 + 3 * 0.04 * sigma_z)
    assert ch.lcl[3] == 0.0  # clipped at zero
    assert ch.z[3] == pytest.approx(0.3 / (0.04 * sigma_z))


def test_zero_baseline_rate_makes_any_failure_infinitely_far() -> None:
    ch = p_chart("share", ["a", "b", "c"], [0, 0, 1], [10, 10, 10], n_baseline=2, kind="p")
    assert ch.center == 0 and np.isposinf(ch.z[2]) and ch.z[0] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_baseline": 0}, "baseline"), ({"n_baseline": 1, "kind": "laney"}, "at least 2 baseline")],
)
def test_bad_chart_requests(kwargs, message) -> None:
    with pytest.raises(FabsightError, match=message):
        p_chart("x", ["a", "b"], [1, 2], [10, 10], **kwargs)


def test_western_electric_rules() -> None:
    assert western_electric(np.array([0.0, 3.5, -3.2]))[1:] == [["rule 1: beyond 3σ"], ["rule 1: beyond 3σ"]]
    two_of_three = western_electric(np.array([2.5, 0.0, 2.2]))
    assert two_of_three == [[], [], ["rule 2: 2 of 3 beyond 2σ (above)"]]
    four_of_five = western_electric(np.array([-1.5, -1.2, 0.3, -1.1, -1.4]))
    assert four_of_five[4] == ["rule 3: 4 of 5 beyond 1σ (below)"]
    assert not any(four_of_five[:4])
    run = western_electric(np.full(9, 0.5))
    assert [bool(h) for h in run] == [False] * 7 + [True, True]
    assert run[7] == ["rule 4: 8 in a row on one side (above)"]
    # Alternating sides never complete a run.
    assert not any(western_electric(np.array([0.5, -0.5] * 6)))
