"""Alembic environment: runs on the connection :func:`fabsight.store.db.migrate` hands over.

There is no alembic.ini: the store opens its own engine (with its SQLite pragmas) and
passes the connection in ``config.attributes``, so migrations run exactly as the service
connects. ``render_as_batch`` lets later migrations alter SQLite tables (copy-and-move).
"""

from __future__ import annotations

from alembic import context

from fabsight.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by running the alembic CLI by hand
    raise RuntimeError("run migrations through fabsight.store.db.migrate (it supplies the connection)")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
