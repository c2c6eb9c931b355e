"""Golden-reference comparison: shrinkage, FDR, regions and the new pattern, on maps with known changes."""

from __future__ import annotations

import numpy as np
import pytest

from assist_maps import disc_map
from fabsight.assist.compare import benjamini_hochberg, build_baseline, compare_map, difference_map
from fabsight.errors import FabsightError
from fabsight.types import DieState


@pytest.fixture(scope="module")
def goldens():
    return [disc_map("clean", seed=100 + s, wafer_id=f"g{s}") for s in range(10)]


def test_baseline_shrinks_towards_the_reference_rate() -> None:
    golden = disc_map("clean", noise=0.02, seed=3)
    b = build_baseline([golden])
    rate = (golden.n_fail + 1) / (golden.n_dies + 2)
    assert b.mean_rate == pytest.approx(rate)
    good = golden.grid == DieState.GOOD
    fail = golden.grid == DieState.FAIL
    np.testing.assert_allclose(b.fail_prob[good], 2 * rate / 3)
    np.testing.assert_allclose(b.fail_prob[fail], (1 + 2 * rate) / 3)
    assert np.isnan(b.fail_prob[golden.grid == DieState.OFF]).all()


def test_benjamini_hochberg_known_values() -> None:
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    np.testing.assert_allclose(q, [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])


def test_clean_wafer_matches_its_golden(goldens) -> None:
    c = compare_map(disc_map("clean", seed=7, wafer_id="7"), build_baseline(goldens))
    assert not c.differs and not c.significant_dies
    assert c.text.startswith("Wafer 7 shows no significant difference from a baseline of 10 wafers: ")
    assert "differs" not in c.text and "excess" not in c.text.lower()


def test_fewer_fails_than_expected_is_not_stated_as_a_difference() -> None:
    # an edge-ring baseline expects ~360 fails; a clean wafer with a new middle SW blob has ~60:
    # the count is no difference (p = 1), the blob is a local one
    goldens = [disc_map("edge-ring", noise=0.01, seed=100 + s) for s in range(10)]
    c = compare_map(disc_map("loc-sw", noise=0.01, seed=7, wafer_id="7"), build_baseline(goldens))
    assert c.observed < c.expected and c.p_value == 1.0 and c.differs
    assert c.text.startswith("Wafer 7 shows no significant difference from a baseline of 10 wafers in its fail "
                             f"count ({c.observed} failing dies against {c.expected:.1f} expected (p = 1)), but "
                             "differs locally. Excess fails concentrate in 1 region: middle SW")
    # a redrawn edge-ring wafer: neither the count nor any region differs
    same = compare_map(disc_map("edge-ring", noise=0.01, seed=7, wafer_id="8"), build_baseline(goldens))
    assert not same.differs and same.text.startswith("Wafer 8 shows no significant difference from a baseline")


@pytest.mark.parametrize("kind", ["clean", "center", "edge-ne", "random", "scratch"])
def test_a_difference_is_stated_only_when_significant(goldens, kind) -> None:
    for seed in range(3):
        c = compare_map(disc_map(kind, seed=seed, wafer_id="w"), build_baseline(goldens[: 1 + 4 * seed]))
        assert c.text.startswith("Wafer w differs from") == (c.p_value < 0.05)
        assert ("no significant difference" in c.text) == (c.p_value >= 0.05)
        assert ("Excess fails" in c.text or "excess is spread" in c.text) == c.differs


@pytest.mark.parametrize("n_golden", [1, 10])
def test_new_edge_cluster_is_found_where_it_was_drawn(goldens, n_golden) -> None:
    test = disc_map("edge-ne", seed=7, wafer_id="7")
    c = compare_map(test, build_baseline(goldens[:n_golden]))
    assert c.differs and c.p_value < 1e-6
    strongest = min((r for r in c.regions if not r.region.endswith("zone")), key=lambda r: r.p_value)
    assert strongest.region == "edge NE" and strongest.q_value < 0.05
    assert "centre" not in {r.region for r in c.regions if r.q_value < 0.05}
    d = c.difference
    assert d.location.location == "edge" and d.location.sector == "NE" and d.extent.cluster_shapes[0] == "arc"
    # one golden map cannot make a single die significant; ten can
    assert (len(c.significant_dies) > 50) == (n_golden == 10)
    assert c.to_dict()["significant_regions"][0].startswith("edge")


def test_difference_map_keeps_only_new_fails(goldens) -> None:
    base = build_baseline(goldens[:1])
    diff = difference_map(goldens[0], base)
    assert diff.n_fail == 0 and diff.n_dies == goldens[0].n_dies


def test_shape_mismatch_is_a_user_error(goldens) -> None:
    with pytest.raises(FabsightError, match="die grid but the golden reference is 40x40"):
        compare_map(disc_map("clean", n=30), build_baseline(goldens))
    with pytest.raises(FabsightError, match="different grid shapes"):
        build_baseline([disc_map("clean", n=30), disc_map("clean", n=40)])


def test_one_die_each_way_reads_in_the_singular(goldens) -> None:
    test = disc_map("clean", seed=100, wafer_id="g0")  # goldens[0] redrawn, then one die flipped each way
    fail, good = np.argwhere(test.grid == DieState.FAIL)[0], np.argwhere(test.grid == DieState.GOOD)[0]
    test.grid[tuple(fail)], test.grid[tuple(good)] = DieState.GOOD, DieState.FAIL
    c = compare_map(test, build_baseline(goldens[:1]))
    assert (c.new_fails, c.recovered) == (1, 1)
    assert "1 die fails here that usually passes, 1 usually failing die passes; 0 dies are" in c.text
