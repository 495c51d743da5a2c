"""Reading ingested images back, refusing any file that moved or changed since the ingest."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image as PILImage

from musecl_store.errors import ImageChangedError


def image_path(source_path: str, relative: str) -> Path:
    """Where an image lives: the city's bundle folder plus the image's bundle-relative path."""
    return Path(source_path) / relative


def open_checked(source_path: str, relative: str, sha256: str) -> PILImage.Image:
    """Open an ingested image as RGB after checking its bytes against the stored sha256.

    Raises:
        ImageChangedError: the file is gone or its content differs from what was ingested;
            the message names the file and says to re-ingest the bundle.
    """
    path = image_path(source_path, relative)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageChangedError(
            f"image {relative!r} is no longer at {path} ({exc.strerror}); the bundle moved or "
            "changed since it was ingested: re-ingest it (`musecl ingest BUNDLE`)"
        ) from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ImageChangedError(
            f"image {relative!r} at {path} changed since it was ingested (sha256 differs); "
            "re-ingest the bundle (`musecl ingest BUNDLE`)"
        )

    with PILImage.open(io.BytesIO(data)) as img:
        return img.convert("RGB")
