"""What the bundle's rows have in common: a content hash over the fields that define them."""

from __future__ import annotations

from typing import ClassVar

from musecl_store.hashing import digest


class HashedRecord:
    """A row whose content hash is :func:`~musecl_store.hashing.digest` of its ``HASHED``
    fields, in that order: an unchanged row hashes the same in every ingest."""

    HASHED: ClassVar[tuple[str, ...]] = ()

    @property
    def content_hash(self) -> str:
        return digest(*(getattr(self, f) for f in self.HASHED))
