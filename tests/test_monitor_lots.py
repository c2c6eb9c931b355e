"""Lot monitoring end to end: grouping and ordering, alarms on a planted bad lot, CLI, HTML report."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta

import numpy as np
import pytest

from fabsight.cli.main import main
from fabsight.errors import FabsightError
from fabsight.io import write_klarf
from fabsight.monitor import group_lots, monitor_lots
from fabsight.synth import generate_map
from fabsight.types import WaferMap

T0 = datetime(2026, 3, 1, 6, 0)


def _lots(n_lots: int, bad: dict[int, float], *, per_lot: int = 20, seed: int = 0) -> list[WaferMap]:
    """``n_lots`` daily lots of clean wafers; in lot k a fraction ``bad[k]`` gains an edge ring."""
    rng = np.random.default_rng(seed)
    maps = []
    for k in range(n_lots):
        for w in range(per_lot):
            pattern = "Edge-Ring" if w < round(bad.get(k, 0.0) * per_lot) else "none"
            grid = generate_map(pattern, (36, 36), rng, noise=(0.01, 0.04))
            maps.append(WaferMap(grid, lot_id=f"L{k}", wafer_id=str(w + 1), timestamp=T0 + timedelta(days=k)))
    return maps


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["fabsight", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


def test_group_lots_orders_by_time_and_says_where_time_came_from(tmp_path) -> None:
    grid = np.ones((10, 10), np.uint8)
    files = []
    for name, age in (("old.npy", 3000), ("new.npy", 10)):
        np.save(tmp_path / name, grid)
        os.utime(tmp_path / name, (1.7e9 - age, 1.7e9 - age))
        files.append(str(tmp_path / name))
    maps = [
        WaferMap(grid, lot_id="B", timestamp=datetime(2026, 1, 2)),
        WaferMap(grid, source=files[1]),  # no lot id: the file is the lot
        WaferMap(grid, lot_id="A", timestamp=datetime(2026, 1, 1)),
        WaferMap(grid, source=files[0]),
        WaferMap(grid, lot_id="B", timestamp=datetime(2026, 1, 3)),
        WaferMap(grid),  # nothing known
    ]
    lots = group_lots(maps)
    assert [lot.lot_id for lot in lots] == ["old", "new", "A", "B", "(no lot id)"]  # the file's name, not its path
    assert [lot.time_source for lot in lots] == ["file mtime", "file mtime", "timestamp", "timestamp", "input order"]
    assert lots[3].wafers == [0, 4] and lots[3].time == datetime(2026, 1, 2)


def test_planted_bad_lot_raises_limit_and_drift_alarms() -> None:
    maps = _lots(7, {6: 0.35})
    res = monitor_lots(maps, n_baseline=4, n_permutations=199, n_projections=32)
    by_lot = {}
    for a in res.alarms:
        by_lot.setdefault(a.lot, set()).add(a.kind)
    assert by_lot == {"L6": {"limit", "drift"}}
    drift = res.drift["L6"]
    assert drift.p_value == pytest.approx(1 / 200)
    assert {"fail_rate_edge_band", "fail_rate_ring4"} & {s.name for s in drift.per_feature[:3]}
    assert set(res.drift) == {"L4", "L5", "L6"}  # baseline lots are not tested against themselves
    d = res.to_dict(maps)
    assert [lot["baseline"] for lot in d["lots"]] == [True] * 4 + [False] * 3
    l6 = [m for m in maps if m.lot_id == "L6"]
    assert d["lots"][6]["yield"] == pytest.approx(sum(m.n_good for m in l6) / sum(m.n_dies for m in l6))
    assert d["time_sources"] == ["timestamp"]
    assert d["charts"][0]["name"] == "fail fraction" and len(d["charts"][0]["points"]) == 7


def test_inspection_and_sort_of_one_lot_are_monitored_apart() -> None:
    """The demo lots: A103's KLARF, STDF and G85 give an inspection lot of 8 wafers and a sort lot of
    3 (wafer 01's STDF and G85 are one sort result), each with its own yield, never averaged."""
    from fabsight.demo import example_files
    from fabsight.io import read_maps

    maps = [m for f in sorted(example_files()) for m in read_maps(f)]
    res = monitor_lots(maps, n_baseline=2, n_permutations=49)
    rows = {r["lot"]: r for r in res.to_dict(maps)["lots"]}
    assert sorted(rows) == ["A101 · inspection M1-ETCH", "A102 · inspection M1-ETCH", "A103 · inspection M1-ETCH",
                            "A103 · sort"]
    insp, sort = rows["A103 · inspection M1-ETCH"], rows["A103 · sort"]
    assert (insp["wafers"], sort["wafers"], sort["source"]) == (8, 3, "sort")
    klarf = [m for m in maps if m.lot_id == "A103" and m.format == "klarf"]
    assert insp["yield"] == pytest.approx(1 - sum(m.n_fail for m in klarf) / sum(m.n_dies for m in klarf))
    last = list({m.wafer_id[-2:]: m for m in maps if m.lot_id == "A103" and m.format != "klarf"}.values())
    assert sort["yield"] == pytest.approx(1 - sum(m.n_fail for m in last) / sum(m.n_dies for m in last))


def test_monitor_needs_lots_and_a_sane_baseline() -> None:
    maps = _lots(3, {}, per_lot=3)
    with pytest.raises(FabsightError, match=r"baseline must be 1\.\.2"):
        monitor_lots(maps, n_baseline=3)
    with pytest.raises(FabsightError, match="at least 2 lots"):
        monitor_lots(maps[:3])


def test_cli_monitor_klarf_history_json_and_report(tmp_path, monkeypatch, capsys) -> None:
    maps = _lots(6, {5: 0.4}, per_lot=12, seed=1)
    for k in range(6):
        write_klarf(maps[k * 12 : (k + 1) * 12], tmp_path / f"lot{k}.000")
    report = tmp_path / "out" / "lots.html"
    code, out, _ = _cli(
        monkeypatch,
        capsys,
        "monitor",
        str(tmp_path / "*.000"),
        "--baseline",
        "3",
        "--permutations",
        "99",
        "--report",
        str(report),
        "--no-model",
        "--json",
    )
    assert code == 0
    res = json.loads(out)
    assert [lot["lot"] for lot in res["lots"]] == [f"L{k}" for k in range(6)]
    assert {a["lot"] for a in res["alarms"]} == {"L5"}
    assert res["report"] == str(report)
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 1 + 6  # the chart and at least one thumbnail per lot
    assert 'id="lot-6"' in html and "drift vs baseline" in html and "limit · fail fraction" in html
    assert [p.name for p in report.parent.iterdir()] == ["lots.html"]  # no temporary left behind


def test_report_is_atomic(tmp_path, monkeypatch) -> None:
    from fabsight.monitor import report as report_mod

    maps = _lots(3, {}, per_lot=4)
    res = monitor_lots(maps, n_baseline=2, n_permutations=19)
    target = tmp_path / "r.html"
    report_mod.write_report(res, maps, target)
    good = target.read_text()
    assert good.startswith("<!doctype html>") and good.rstrip().endswith("</html>")

    def broken(text: str) -> None:  # the disk fills up half-way through writing
        raise OSError("No space left on device")

    monkeypatch.setattr("fabsight.utils.atomic.os.fsync", lambda fd: broken(""))
    with pytest.raises(OSError, match="No space"):
        report_mod.write_report(res, maps, target)
    assert target.read_text() == good  # the previous report is intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_cli_drift_between_lot_selections(tmp_path, monkeypatch, capsys) -> None:
    maps = _lots(2, {1: 0.5}, per_lot=20, seed=2)
    write_klarf(maps[:20], tmp_path / "a.000")
    write_klarf(maps[20:], tmp_path / "b.000")
    code, out, _ = _cli(
        monkeypatch,
        capsys,
        "drift",
        str(tmp_path / "a.000"),
        str(tmp_path / "b.000"),
        "--permutations",
        "99",
        "--no-model",
        "--json",
    )
    res = json.loads(out)
    assert code == 0 and res["drift"] and res["n_a"] == res["n_b"] == 20 and res["pattern_changes"] is None
    assert res["model"] is None and [c["name"] for c in res["components"]] == ["features"]
    code, out, _ = _cli(
        monkeypatch,
        capsys,
        "drift",
        str(tmp_path / "*.000"),
        str(tmp_path / "*.000"),
        "--lots-a",
        "L0",
        "--lots-b",
        "L0",
        "--permutations",
        "99",
        "--no-model",
        "--json",
    )
    assert code == 0 and json.loads(out)["p_value"] == 1.0  # identical sets
    code, _, err = _cli(
        monkeypatch, capsys, "drift", str(tmp_path / "a.000"), str(tmp_path / "b.000"), "--lots-b", "L7"
    )
    assert code == 2 and err.startswith("error: ") and "no lot L7" in err and err.count("\n") == 1


def test_cli_user_mistakes_are_one_line(tmp_path, monkeypatch, capsys) -> None:
    code, _, err = _cli(monkeypatch, capsys, "monitor", str(tmp_path / "missing.000"))
    assert code == 2 and "no such file" in err and err.count("\n") == 1
    code, _, err = _cli(monkeypatch, capsys, "monitor", str(tmp_path), "--report", str(tmp_path / "r.pdf"))
    assert code == 2 and ".html" in err
    code, _, err = _cli(monkeypatch, capsys, "drift", str(tmp_path), str(tmp_path), "--model", "m", "--no-model")
    assert code == 2 and "--model and --no-model" in err and err.count("\n") == 1


def test_sustained_small_shift_raises_a_run_alarm() -> None:
    """Eight lots each a little worse than baseline, all inside the limits: rule 4 fires on the 8th."""
    rng = np.random.default_rng(5)

    def lot(k: int, fails: int) -> list[WaferMap]:
        out = []
        for w in range(2):
            flat = np.ones(400, np.uint8)
            flat[rng.choice(400, size=fails // 2 + (w < fails % 2), replace=False)] = 2
            out.append(
                WaferMap(flat.reshape(20, 20), lot_id=f"L{k:02d}", wafer_id=str(w), timestamp=T0 + timedelta(days=k))
            )
        return out

    fails = [80, 88, 72, 80] + [84] * 8  # per lot of 800 dies: baseline p̄ = 0.1, monitored lots at 0.105
    maps = [m for k, f in enumerate(fails) for m in lot(k, f)]
    res = monitor_lots(maps, n_baseline=4, n_permutations=19)
    chart = res.charts[0]
    assert chart.center == pytest.approx(0.1)
    assert (chart.value[4:] < chart.ucl[4:]).all()  # no single lot is beyond the limits
    runs = [(a.lot, a.detail) for a in res.alarms if a.kind == "run"]
    assert runs == [("L11", "rule 4: 8 in a row on one side (above)")]
