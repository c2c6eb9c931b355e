"""Small helpers shared by every area (atomic files, JSON, progress)."""
