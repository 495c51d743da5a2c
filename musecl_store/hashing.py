"""Content hashes: short, stable digests of values (an unchanged bundle file, config or
vector set hashes the same in every process and on every machine)."""

from __future__ import annotations

import hashlib
from typing import Any


def digest(*parts: Any) -> str:
    """A short, stable content hash of some values (hex, 32 chars)."""
    return digest_bytes(*parts).hex()


def digest_bytes(*parts: Any) -> bytes:
    """:func:`digest` as raw bytes."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x1f")
    return h.digest()
