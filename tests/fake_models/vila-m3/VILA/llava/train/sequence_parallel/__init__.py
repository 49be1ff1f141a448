from .globals import get_pg_manager  # noqa: F401
