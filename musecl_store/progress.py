"""Progress bars for long steps, on stderr so that ``--json`` output stays clean."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

from musecl_store.settings import Settings

T = TypeVar("T")


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    enabled: bool | None = None,
    unit: str = "it",
) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar.

    Args:
        enabled: ``False`` hides the bar; ``None`` follows ``MUSECL_PROGRESS`` and shows it
            only when stderr is a terminal.
    """
    if enabled is None:
        enabled = Settings.from_env().progress
    # disable=None lets tqdm hide the bar when stderr is not a terminal (CI logs, pipes).
    yield from tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        disable=True if not enabled else None,
        leave=False,
        dynamic_ncols=True,
    )
