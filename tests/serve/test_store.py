"""The results store: migrations match the models, SQLite settings, PostgreSQL path."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from fabsight.demo import example_files
from fabsight.errors import FabsightError
from fabsight.store import open_store
from fabsight.store.ingest import ingest_bytes
from fabsight.store.models import Base, pack_grid, unpack_grid
from fabsight.store.queries import (
    WaferFilter,
    counts,
    decide_review,
    list_wafers,
    lot_summaries,
    lot_wafers,
    to_wafer_map,
)
from fabsight.types import wafer_key


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite")
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
    assert set(inspect(store.engine).get_table_names()) >= {t.name for t in Base.metadata.sorted_tables}
    store.close()
    # opening again is a no-op upgrade and keeps the data
    again = open_store(tmp_path / "s.sqlite")
    with again.session() as s:
        assert counts(s)["wafers"] == 0
    again.close()


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    store.close()


def test_grid_round_trips_compactly() -> None:
    rng = np.random.default_rng(0)
    grid = rng.choice([0, 1, 1, 1, 2], size=(52, 52)).astype(np.uint8)
    blob = pack_grid(grid)
    assert np.array_equal(unpack_grid(blob, 52, 52), grid) and len(blob) < grid.size


def test_bad_store_locations(tmp_path: Path) -> None:
    with pytest.raises(FabsightError, match="is a folder"):
        open_store(tmp_path)
    with pytest.raises(FabsightError, match="supports sqlite"):
        open_store("mysql://u@h/db")
    with pytest.raises(FabsightError, match="cannot open the store"):
        open_store("postgresql+psycopg2://nobody@127.0.0.1:1/none")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server of FABSIGHT_TEST_PG_URL, dropped afterwards."""
    base = os.environ.get("FABSIGHT_TEST_PG_URL")
    if not base:
        pytest.skip("FABSIGHT_TEST_PG_URL is not set (CI's .ci/run starts a throwaway PostgreSQL)")
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"fabsight_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def test_postgresql_store(pg_url: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = open_store(pg_url)
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    files = [p for p in example_files() if p.suffix == ".klarf"]
    # concurrent uploads of three lots plus the same file twice: lots created once, duplicates detected
    jobs = [*files, files[0]]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: ingest_bytes(store, p.read_bytes(), p.name, files_dir=tmp_path), jobs))
    assert sorted(r.duplicate for r in results) == [False, False, False, True]
    with store.session() as s:
        assert counts(s) == {"uploads": 3, "lots": 3, "wafers": 24, "reviews": 24, "die_results": 0}
        assert [lot.name for lot in lot_summaries(s)] == ["A101", "A102", "A103"]
        w = list_wafers(s, WaferFilter(lot="A102"))[0]
        assert to_wafer_map(w).shape == (w.rows, w.cols)
        review_id = w.review.id
    decided = decide_review(store, review_id, label="Center", reviewer="pg")
    assert decided.state == "corrected"
    with store.session() as s:
        assert [x.id for x in list_wafers(s, WaferFilter(pattern="center"))] == [w.id]
    store.close()


def _ingest(store, paths, tmp_path: Path) -> None:
    for p in paths:
        ingest_bytes(store, p.read_bytes(), p.name, files_dir=tmp_path / "files")


def test_inspection_and_sort_of_one_lot_are_one_lot_of_its_physical_wafers(tmp_path: Path) -> None:
    """Lot A103 shipped as KLARF (8 wafers), STDF (sort of 01-03) and G85 (sort of 01): 8 wafers, not 12."""
    store = open_store(tmp_path / "s.sqlite")
    _ingest(store, [p for p in example_files() if "A103" in p.name], tmp_path)
    with store.session() as s:
        (lot,) = lot_summaries(s)
        assert (lot.name, lot.wafers, lot.results) == ("A103", 8, 12)
        by_source = {src.source: src for src in lot.sources}
        assert list(by_source) == ["inspection M1-ETCH", "sort"]
        wafers = lot_wafers(s, "A103")
        assert [w.wafer_id for w in wafers] == [f"{i:02d}" for i in range(1, 9)]
        assert [sorted(r.format for r in w.results) for w in wafers[:4]] == [
            ["g85", "klarf", "stdf"], ["klarf", "stdf"], ["klarf", "stdf"], ["klarf"]]
        # each source has its own yield over its own wafers; the G85 copy of wafer 01 counts once in sort
        inspection = [r.yield_ for w in wafers for r in w.results if r.kind == "inspection"]
        sort = [next(r for r in reversed(w.results) if r.kind == "sort").yield_ for w in wafers[:3]]
        assert by_source["inspection M1-ETCH"].wafers == 8 and by_source["sort"].wafers == 3
        assert by_source["inspection M1-ETCH"].mean_yield == pytest.approx(np.mean(inspection))
        assert by_source["sort"].mean_yield == pytest.approx(np.mean(sort))
        assert by_source["sort"].results == 4
    store.close()


def test_real_files_keep_their_lots_and_sources(shared: Path, tmp_path: Path) -> None:
    fx = shared / "fixtures"
    store = open_store(tmp_path / "s.sqlite")
    _ingest(store, [fx / "klarf" / "QUU_NUU.000", fx / "stdf" / "lot2.stdf", fx / "g85" / "SEMI_G85_1101_ALL.xml"],
            tmp_path)
    with store.session() as s:
        lots = {lot.name: lot for lot in lot_summaries(s)}
        assert {n: (lot.wafers, [x.source for x in lot.sources]) for n, lot in lots.items()} == {
            "QUU": (3, ["inspection NUU"]), "GAL-LOT": (1, ["sort"]), "DEADBEEF": (1, ["sort"])}
        # the STDF's WAFER_ID "GAL-LOT-02" is wafer 02 of lot GAL-LOT
        assert [w.wafer_id for w in lot_wafers(s, "GAL-LOT")] == ["02"]
        assert [w.wafer_id for w in lot_wafers(s, "QUU")] == ["01", "02", "06"]
    store.close()


def test_wafer_key_joins_the_spellings_of_one_wafer() -> None:
    assert {wafer_key(w, "A103") for w in ("1", "01", "001", "A103-01", "a103_1", " 01 ")} == {"01"}
    assert wafer_key("A1031", "A103") == "A1031" and wafer_key("P6AB36-01", "") == "P6AB36-01"
    assert wafer_key("123", "L") == "123"


def test_upgrading_a_0001_store_groups_its_wafers(tmp_path: Path) -> None:
    """A store written before physical wafers existed: its rows get their wafer, source and per-source yield."""
    from fabsight.store.db import migrate

    path = tmp_path / "old.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    migrate(engine, "0001")
    blob = pack_grid(np.array([[1, 2], [1, 1]], dtype=np.uint8))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO lots (id, name, created_at) VALUES (1, 'A103', '2026-11-04 06:00:00')"))
        for i, fmt in enumerate(["klarf", "klarf", "stdf", "g85"], start=1):
            conn.execute(text("INSERT INTO uploads (id, filename, sha256, size, content_type, format, status, path, "
                              "created_at) VALUES (:i, :f, :h, 1, 'x', :fmt, 'stored', :f, '2026-11-04 06:00:00')"),
                         {"i": i, "f": f"u{i}.{fmt}", "h": f"{i:064d}", "fmt": fmt})
        rows = [(1, "01", "klarf", 0.75), (2, "02", "klarf", 1.0), (3, "A103-01", "stdf", 0.5), (4, "1", "g85", 0.5)]
        for i, wid, fmt, y in rows:
            conn.execute(text("INSERT INTO wafers (id, upload_id, lot_pk, wafer_id, source, format, measured_at, rows, "
                              "cols, grid_blob, notch, n_good, n_fail, yield, labels, created_at) VALUES (:i, :i, 1, "
                              ":w, 'f', :fmt, :t, 2, 2, :b, 'down', 3, 1, :y, '[]', :t)"),
                         {"i": i, "w": wid, "fmt": fmt, "t": f"2026-11-04 06:0{i}:00", "b": blob, "y": y})
    engine.dispose()
    store = open_store(path)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    with store.session() as s:
        (lot,) = lot_summaries(s)
        assert (lot.wafers, lot.results) == (2, 4)
        assert [(x.source, x.wafers, x.mean_yield) for x in lot.sources] == [("inspection", 2, 0.875), ("sort", 1, 0.5)]
        assert [(w.wafer_id, [r.id for r in w.results]) for w in lot_wafers(s, "A103")] == [("01", [1, 3, 4]),
                                                                                             ("02", [2])]
    store.close()
    # new uploads after the upgrade join the upgraded wafers
    store = open_store(path)
    _ingest(store, [p for p in example_files() if p.name == "LOT-A103_sort.stdf"], tmp_path)
    with store.session() as s:
        assert [len(w.results) for w in lot_wafers(s, "A103")[:3]] == [4, 2, 1]
    store.close()
