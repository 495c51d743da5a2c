"""Images for the encoders: ingested files read back and checked against their sha256, the
images of one kind as pixel batches (held in memory up to the image cache, else decoded batch
by batch), and an image encoder run over them."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from musecl_store.errors import ImageChangedError, InputError
from musecl_store.progress import progress

__all__ = [
    "IMAGE_CACHE_MB",
    "ImageChangedError",
    "ImageSet",
    "Pixels",
    "encode_images",
    "image_cache_bytes",
    "image_path",
    "open_checked",
]


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


@dataclass
class ImageSet:
    """The images of one kind: the region index, path and sha256 of each."""

    region: np.ndarray
    paths: list[str]
    sha256: list[str]

    def of_regions(self, regions: set[int]) -> ImageSet:
        """The images of the given region indices only, in the same order."""
        idx = np.flatnonzero([r in regions for r in self.region.tolist()])
        return ImageSet(
            self.region[idx], [self.paths[i] for i in idx], [self.sha256[i] for i in idx]
        )


IMAGE_CACHE_MB = 1024
"""Images of one kind held in memory up to this size (``MUSECL_IMAGE_CACHE_MB``); above it,
every batch is decoded from the image files, so memory does not grow with the city."""


def image_cache_bytes() -> int:
    raw = os.environ.get("MUSECL_IMAGE_CACHE_MB", "").strip()
    try:
        mb = float(raw) if raw else IMAGE_CACHE_MB
    except ValueError:
        mb = float("nan")
    if not mb >= 0:
        raise InputError(f"MUSECL_IMAGE_CACHE_MB must be a number of MiB >= 0, not {raw!r}")
    return int(mb * 2**20)


class Pixels:
    """The images of one kind at one size, as uint8 ``(n, 3, size, size)``, indexed like a
    tensor (an index array or tensor, or a slice) one batch at a time.

    When they fit in :func:`image_cache_bytes` they are decoded once and held; otherwise each
    batch is decoded from its files when asked for (bounded memory: a million 64 px tiles
    would take 12 GB). Either way every image is checked against its sha256 as it is read,
    and the pixels are the same.
    """

    def __init__(
        self,
        source: str,
        images: ImageSet,
        size: int,
        desc: str,
        show_progress: bool | None = None,
    ):
        self.source, self.images, self.size = source, images, size
        self._all: torch.Tensor | None = None
        if len(images.paths) * 3 * size * size <= image_cache_bytes():
            rows = np.arange(len(images.paths))
            self._all = self._read(rows, desc, show_progress)

    def __len__(self) -> int:
        return len(self.images.paths)

    @property
    def cached(self) -> bool:
        return self._all is not None

    def __getitem__(self, index: Any) -> torch.Tensor:
        if self._all is not None:
            return self._all[index]
        if isinstance(index, slice):
            rows = np.arange(len(self))[index]
        else:
            rows = np.asarray(index, dtype=np.int64).reshape(-1)
        return self._read(rows)

    def _read(
        self, rows: np.ndarray, desc: str = "", show_progress: bool | None = False
    ) -> torch.Tensor:
        size, imgs = self.size, self.images
        out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
        for j, k in enumerate(
            progress(rows.tolist(), desc=desc, enabled=show_progress, unit="img")
        ):
            img = open_checked(self.source, imgs.paths[k], imgs.sha256[k])
            if img.size != (size, size):
                img = img.resize((size, size))
            out[j] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return out


@torch.no_grad()
def encode_images(
    encoder: torch.nn.Module,
    pixels: torch.Tensor | Pixels,
    batch_size: int = 256,
    show_progress: bool | None = False,
) -> np.ndarray:
    """Run an image encoder (eval mode) over uint8 images in batches."""
    encoder.eval()
    starts = range(0, len(pixels), batch_size)
    outs = [
        encoder(pixels[i : i + batch_size].float() / 255.0)
        for i in progress(starts, desc="encode images", enabled=show_progress, unit="batch")
    ]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)
