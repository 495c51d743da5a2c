"""How the commands print: JSON for ``--json``, aligned tables for people, and whole
outputs (CSV, JSON) written to ``--out`` or stdout."""

from __future__ import annotations

import json
from typing import Any

import click
import numpy as np


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):  # numpy scalars from pandas frames
        return obj.item()
    return str(obj)


def emit(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (numpy scalars as numbers, the rest as text)."""
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=_plain))


def table(headers: list[str], rows: list[list[Any]], aligns: str = "") -> None:
    """Print rows under a header line, each column as wide as its widest cell.

    ``aligns``: one character per column, ``<`` (default) or ``>`` (numbers)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        parts = []
        for i, c in enumerate(r):
            a = aligns[i] if i < len(aligns) else "<"
            parts.append(c.rjust(widths[i]) if a == ">" else c.ljust(widths[i]))
        click.echo("  ".join(parts).rstrip())


def write_out(out: str | None, text: str) -> None:
    """``text`` into the file ``--out`` names, or to stdout without one.

    Raises:
        click.ClickException: the file cannot be written (exit 1), naming it.
    """
    if out:
        try:
            with open(out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise click.ClickException(f"--out {out}: cannot write ({exc.strerror})") from exc
    else:
        click.echo(text, nl=False)
