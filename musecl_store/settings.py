"""Runtime settings, read once from the environment into a frozen dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DB_FILE = "musecl.sqlite"


@dataclass(frozen=True)
class Settings:
    """Where the store lives and how the process behaves.

    Attributes:
        database_url: SQLAlchemy URL or SpatiaLite file path (``MUSECL_DATABASE_URL``);
            ``None`` means the embedded default, ``./musecl.sqlite``.
        spatialite_library: the SpatiaLite module to load (``SPATIALITE_LIBRARY_PATH``).
        index_dir: where FAISS index files are cached (``MUSECL_INDEX_DIR``).
        progress: show progress bars on stderr (``MUSECL_PROGRESS=0`` turns them off).
    """

    database_url: str | None = None
    spatialite_library: str = "mod_spatialite"
    index_dir: Path = Path(".musecl-index")
    progress: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("MUSECL_DATABASE_URL") or None,
            spatialite_library=env.get("SPATIALITE_LIBRARY_PATH") or "mod_spatialite",
            index_dir=Path(env.get("MUSECL_INDEX_DIR") or ".musecl-index"),
            progress=env.get("MUSECL_PROGRESS", "1").strip().lower() not in {"0", "false", "no"},
        )
