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
from fabsight.store.queries import WaferFilter, counts, decide_review, list_wafers, lot_summaries, to_wafer_map


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite")
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
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
