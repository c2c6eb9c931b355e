"""Results store (MISSION M5): lots, wafers, predictions, explanations, reviews, uploads.

SQLite file by default, PostgreSQL by URL (:func:`open_store`); schema migrations with
Alembic, applied at start-up; every upload stored in one transaction (:mod:`repo`).
"""

from fabsight.store.db import Store, open_store

__all__ = ["Store", "open_store"]
