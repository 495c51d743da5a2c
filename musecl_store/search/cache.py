"""The open FAISS indexes of one store, kept between calls.

Each search still checks its index against the database (see :mod:`.index`); what is kept
is the loaded index, so that a search does not read it from disk again. One lock per index:
a catch-up or a rebuild must not run beside a search of the same index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from musecl_store.errors import InputError
from musecl_store.search.index import IndexOptions, RegionIndex
from musecl_store.store.tables import ModelVersion
from musecl_store.store.versions import resolve

Sessions = Callable[[], AbstractContextManager[Session]]


class _Entry:
    """One kept index (None until opened, or after it was dropped) and its lock."""

    def __init__(self) -> None:
        self.index: RegionIndex | None = None
        self.lock = threading.Lock()


class IndexCache:
    """The open indexes of one store, by (model version, kind, index type).

    ``sessions`` makes a read session of the store (a context manager)."""

    def __init__(self, index_dir: Path, sessions: Sessions) -> None:
        self.index_dir = index_dir
        self._sessions = sessions
        self._entries: dict[tuple[int, str, str], _Entry] = {}
        self._lock = threading.Lock()

    def _entry(self, key: tuple[int, str, str]) -> _Entry:
        with self._lock:
            return self._entries.setdefault(key, _Entry())

    def model_version(self, city: str, model_version: int | None) -> int:
        """The model version a call means (given, else the city's active one), which must
        exist."""
        with self._sessions() as s:
            mv = resolve(s, city, model_version)
            if s.get(ModelVersion, mv) is None:
                raise InputError(f"model version {mv} does not exist")
        return mv

    @contextmanager
    def held(
        self, city: str, model_version: int | None, kind: str, index_type: str = "auto"
    ) -> Iterator[tuple[Session, RegionIndex]]:
        """(session, open index) of a model version and kind, the index held under its lock.

        The session starts after the lock is taken, so it never reads an older state of the
        store than the one an earlier holder brought the index up to."""
        mv = self.model_version(city, model_version)
        entry = self._entry((mv, kind, index_type))
        with entry.lock, self._sessions() as s:
            if entry.index is None:
                entry.index = RegionIndex.open(
                    s, self.index_dir, mv, kind, IndexOptions(index_type=index_type)
                )
            yield s, entry.index

    def build(
        self, city: str, model_version: int | None, kind: str, index_type: str
    ) -> dict[str, Any]:
        """Build (or rebuild) an index; the next search opens the new one."""
        with self._sessions() as s:
            mv = resolve(s, city, model_version)
        entry = self._entry((mv, kind, "auto"))
        with entry.lock, self._sessions() as s:  # no search of this kind runs meanwhile
            idx = RegionIndex.build(s, self.index_dir, mv, kind, IndexOptions(index_type))
            status = idx.status()
        self.forget(mv, kind)
        return dict(status)

    def forget(self, model_version: int, kind: str | None = None) -> None:
        """Drop the kept indexes of a model version (and kind): rebuilt, re-embedded or
        deleted."""
        with self._lock:
            entries = [
                e
                for k, e in self._entries.items()
                if k[0] == model_version and kind in (None, k[1])
            ]
        for entry in entries:
            with entry.lock:
                entry.index = None
