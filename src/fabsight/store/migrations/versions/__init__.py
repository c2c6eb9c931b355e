"""One module per schema revision; applied in order by :func:`fabsight.store.db.migrate`."""
