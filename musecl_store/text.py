"""Text that a store can hold: PostgreSQL refuses NUL in text and JSON, and a lone UTF-16
surrogate (which JSON's \\uXXXX escapes can make) cannot be encoded as UTF-8."""

from __future__ import annotations

import re

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def bad_char(text: str) -> str | None:
    """What makes ``text`` unstorable (a NUL, a lone surrogate), or None."""
    m = UNSTORABLE.search(text)
    if m is None:
        return None
    return "a NUL character" if m.group() == "\x00" else f"a lone surrogate {m.group()!r}"


def storable(text: str) -> bool:
    """Whether a store can hold ``text``."""
    return UNSTORABLE.search(text) is None
