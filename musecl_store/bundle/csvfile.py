"""Reading one CSV file of the bundle: its header checked up front, its rows streamed with
the line each starts on, malformed rows skipped and reported."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from musecl_store import geo
from musecl_store.bundle.files import inside
from musecl_store.bundle.report import Report
from musecl_store.errors import BundleError


class CsvReader:
    """One CSV with a header row. The header is checked when the reader is made (missing
    required columns are fatal); iterating yields (line, row) for each well-formed row."""

    def __init__(self, root: Path, name: str, required: list[str], report: Report):
        self.name, self.report = name, report
        self.path = inside(root, name)
        with self._open() as f:
            header = self._decode(lambda: next(csv.reader(f), None), 1)
        if header is None:
            raise BundleError("file is empty; it needs a header row", file=name, line=1)
        self.columns = [h.strip() for h in header]
        for c in self.columns:
            if "\x00" in c:
                raise BundleError("a column name holds a NUL character", file=name, line=1)
        missing = [c for c in required if c not in self.columns]
        if missing:
            raise BundleError(
                f"missing required column(s) {', '.join(missing)}; the header is "
                f"{geo.short(','.join(self.columns), 200)}",
                file=name,
                line=1,
            )
        dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if dupes:
            raise BundleError(
                f"duplicate column(s) {geo.short(', '.join(dupes), 200)} in the header",
                file=name,
                line=1,
            )

    def _open(self) -> Any:
        try:
            return self.path.open(encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise BundleError(
                f"cannot read the file ({exc.strerror or exc})", file=self.name
            ) from exc

    def _decode(self, read: Any, line: int) -> Any:
        try:
            return read()
        except UnicodeDecodeError as exc:
            # The text layer decodes in blocks, so find the bad byte's line in the raw file.
            data = self.path.read_bytes()
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as raw:
                line = data[: raw.start].count(b"\n") + 1
            raise BundleError(
                f"not valid UTF-8 ({exc.reason}); save the file as UTF-8", file=self.name, line=line
            ) from exc
        except csv.Error as exc:
            raise BundleError(f"unreadable CSV ({exc})", file=self.name, line=line) from exc

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        n = len(self.columns)
        with self._open() as f:
            reader = csv.reader(f)
            next(reader)
            while True:
                line = reader.line_num + 1  # where the record starts (it may span lines)
                row = self._decode(lambda: next(reader, None), line)
                if row is None:
                    return
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != n:
                    self.report.skip(
                        self.name,
                        line,
                        f"{len(row)} fields, the header has {n}",
                        kind="wrong number of fields",
                    )
                    continue
                yield line, dict(zip(self.columns, row, strict=True))


def text_problem(row: dict[str, str], limits: dict[str, int | None]) -> str | None:
    """Why some of a row's text fields cannot be stored (a NUL, too long), or None."""
    for col, limit in limits.items():
        value = row.get(col, "")
        if "\x00" in value:
            return f"{col} holds a NUL character"
        if limit is not None and len(value.strip()) > limit:
            return f"{col} is longer than {limit} characters"
    return None
