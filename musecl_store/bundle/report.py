"""What an ingest found wrong but could live with: skipped rows, fixed geometries, notes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_LISTED = 1000
"""Rows listed one by one in a summary; past that only the counts per reason grow."""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    reason: str
    action: str  # "skipped" | "fixed" | "note"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.reason} ({self.action})"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason, "action": self.action}


@dataclass
class Report:
    """Collects problems; ``counts`` keeps every one, ``listed`` the first ``MAX_LISTED``."""

    listed: list[Problem] = field(default_factory=list)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(
        self, file: str, line: int | None, reason: str, action: str, kind: str | None = None
    ) -> None:
        """Record a problem; ``kind`` groups the counts (defaults to the reason)."""
        self.counts[(file, kind or reason, action)] += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(Problem(file, line, reason, action))

    def skip(self, file: str, line: int | None, reason: str, kind: str | None = None) -> None:
        self.add(file, line, reason, "skipped", kind)

    def fix(self, file: str, line: int | None, reason: str, kind: str | None = None) -> None:
        self.add(file, line, reason, "fixed", kind)

    def note(self, file: str, line: int | None, reason: str) -> None:
        self.add(file, line, reason, "note")

    def total(self, action: str | None = None) -> int:
        return sum(n for (_, _, a), n in self.counts.items() if action in (None, a))

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.total("skipped"),
            "fixed": self.total("fixed"),
            "by_reason": [
                {"file": f, "reason": r, "action": a, "count": n}
                for (f, r, a), n in sorted(self.counts.items())
            ],
            "rows": [p.to_dict() for p in self.listed],
            "rows_truncated": self.total() > len(self.listed),
        }
