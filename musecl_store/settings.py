"""Runtime settings, read once from the environment into a frozen dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from musecl_store.errors import SettingError

DEFAULT_DB_FILE = "musecl.sqlite"


@dataclass(frozen=True)
class Settings:
    """Where the store lives and how the process behaves.

    Attributes:
        database_url: SQLAlchemy URL or SpatiaLite file path (``MUSECL_DATABASE_URL``);
            ``None`` means the embedded default, ``./musecl.sqlite``.
        read_database_url: where reads go (``MUSECL_READ_DATABASE_URL``): a PostgreSQL
            streaming replica of ``database_url``; ``None`` reads from the primary.
        spatialite_library: the SpatiaLite module to load (``SPATIALITE_LIBRARY_PATH``).
        index_dir: where FAISS index files are cached (``MUSECL_INDEX_DIR``).
        progress: show progress bars on stderr (``MUSECL_PROGRESS=0`` turns them off).
        lock_timeout: seconds a writer waits for another writer to finish before it gives up
            (``MUSECL_LOCK_TIMEOUT``, default 600; the CLI's ``--lock-timeout``).
    """

    database_url: str | None = None
    read_database_url: str | None = None
    spatialite_library: str = "mod_spatialite"
    index_dir: Path = Path(".musecl-index")
    progress: bool = True
    lock_timeout: float = 600.0

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("MUSECL_DATABASE_URL") or None,
            read_database_url=env.get("MUSECL_READ_DATABASE_URL") or None,
            spatialite_library=env.get("SPATIALITE_LIBRARY_PATH") or "mod_spatialite",
            index_dir=Path(env.get("MUSECL_INDEX_DIR") or ".musecl-index"),
            progress=env.get("MUSECL_PROGRESS", "1").strip().lower() not in {"0", "false", "no"},
            lock_timeout=lock_timeout(
                env.get("MUSECL_LOCK_TIMEOUT") or "600", "MUSECL_LOCK_TIMEOUT"
            ),
        )


def lock_timeout(value: str | float, name: str = "--lock-timeout") -> float:
    """A lock timeout in seconds (>= 0), or a SettingError naming where it came from."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise SettingError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return seconds
