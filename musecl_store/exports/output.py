"""Writing a file where the user pointed (``--out``): a failure names the path and leaves
no half-written file behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from musecl_store.errors import InputError


@contextmanager
def writing(out: str | Path) -> Iterator[None]:
    """Turn a failure to write ``out`` (a missing folder, no permission, a full disk) into
    an InputError naming the path; a half-written file is removed."""
    path = Path(out)
    existed = path.exists()
    if not path.parent.is_dir():
        raise InputError(f"{out}: cannot write here (the folder {path.parent} does not exist)")
    if path.is_dir():
        raise InputError(f"{out}: is a folder; give a file name")
    try:
        yield
    except OSError as exc:
        if not existed:
            path.unlink(missing_ok=True)
        raise InputError(f"{out}: cannot write ({exc.strerror or exc})") from exc
