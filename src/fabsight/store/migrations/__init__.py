"""Alembic migration scripts of the results store (a package so that installs ship them)."""
