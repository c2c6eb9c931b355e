"""Opening the results store: SQLite by default, PostgreSQL by URL, schema migrated to head.

SQLite is set up for a small web service with several writers: WAL journal (readers never
wait for a writer), foreign keys enforced, a busy timeout, and write transactions opened
with ``BEGIN IMMEDIATE``. The last point matters: pysqlite would otherwise start a
transaction as a reader and upgrade it at the first write, and in WAL mode an upgrade after
another connection committed fails at once with "database is locked" (the busy timeout
does not apply to it). Taking the write lock up front makes concurrent uploads queue up
instead of failing.

The schema is owned by Alembic: :func:`open_store` upgrades the database to the newest
migration shipped in ``fabsight/store/migrations`` before anything else touches it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from fabsight.errors import FabsightError

MIGRATIONS = Path(__file__).with_name("migrations")
#: Seconds a SQLite writer waits for another writer before giving up.
BUSY_TIMEOUT_S = 30


def resolve_url(db: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL from a URL or a plain file path (which means a SQLite file)."""
    text = str(db)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        if path.is_dir():
            raise FabsightError(path, "is a folder; give the SQLite database file (e.g. store.sqlite)")
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise FabsightError(text, f"not a database URL ({exc})") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise FabsightError(text, "the store supports sqlite:///FILE and postgresql://… URLs")
    return text


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode up to the last checkpoint
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` with the migration scripts shipped in the package."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


class Store:
    """An open results store: an engine plus session factories for reading and writing."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._read = sessionmaker(engine, expire_on_commit=False)
        writer = engine.execution_options(sqlite_begin="BEGIN IMMEDIATE") if self.is_sqlite else engine
        self._write = sessionmaker(writer, expire_on_commit=False)

    def session(self) -> Session:
        """A session for reading (it may write too, but only :meth:`write` queues writers safely)."""
        return self._read()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back on any exception."""
        with self._write() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


def open_store(db: str | os.PathLike[str], *, migrate_schema: bool = True) -> Store:
    """Open (creating if needed) the store at ``db`` and bring its schema to the newest version."""
    url = resolve_url(db)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _sqlite_setup(engine)
    try:
        if migrate_schema:
            migrate(engine)
        else:
            with engine.connect():
                pass
    except OperationalError as exc:
        engine.dispose()
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        shown = make_url(url).render_as_string(hide_password=True)
        raise FabsightError(shown, f"cannot open the store ({first})") from None
    return Store(url, engine)
