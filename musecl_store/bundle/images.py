"""images.csv: remote-sensing tiles and street views, each checked to be a readable image
inside the bundle and located in its region."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image as PILImage
from pyproj import CRS

from musecl_store import geo
from musecl_store.bundle.csvfile import CsvReader
from musecl_store.bundle.files import IMAGES, is_file
from musecl_store.bundle.points import PointBatch
from musecl_store.bundle.records import HashedRecord
from musecl_store.bundle.report import Report
from musecl_store.progress import progress


@dataclass(frozen=True)
class ImageRecord(HashedRecord):
    line: int
    path: str
    kind: str
    lon: float
    lat: float
    heading: float | None
    sha256: str
    size_bytes: int
    width: int
    height: int
    region: int

    HASHED = ("path", "kind", "lon", "lat", "heading", "sha256")


_LEAVES = "image path leaves the bundle"


class _PathError(ValueError):
    """An image path that cannot be used; ``kind`` is the report's reason group."""

    def __init__(self, message: str, kind: str = "bad image path"):
        super().__init__(message)
        self.kind = kind


def _image_path(value: str, root: Path) -> str:
    """Normalise a bundle-relative image path; raises ValueError for one that leaves the bundle."""
    raw = value.strip().replace("\\", "/")
    if not raw:
        raise _PathError("empty path")
    if "\x00" in raw:
        raise _PathError(f"path {geo.short(value)} holds a NUL character")
    p = PurePosixPath(raw)
    if p.is_absolute() or ".." in p.parts:
        raise _PathError(
            f"path {geo.short(value)} must be relative to the bundle and stay inside it", _LEAVES
        )
    return p.as_posix()


def _image_file(root: Path, rel: str) -> Path:
    """The file behind a normalised image path; raises _PathError when it is missing, not a
    regular file, or a symbolic link (of the file or of a folder on its way) that leaves the
    bundle, which is refused like a ``..`` path."""
    path = root / rel
    try:
        real = path.resolve()
        inside = real.is_relative_to(root.resolve())
        exists = path.exists()
        regular = path.is_file()
    except (OSError, RuntimeError, ValueError) as exc:  # too long a name, a symlink loop
        raise _PathError(f"image file {geo.short(rel)} cannot be opened ({exc})") from exc
    if not inside:
        raise _PathError(
            f"path {geo.short(rel)} must be relative to the bundle and stay inside it "
            f"(it is a symbolic link to {str(real)!r}, outside the bundle)",
            _LEAVES,
        )
    if not exists:
        raise _PathError(f"image file {rel!r} does not exist", "missing image file")
    if not regular:
        raise _PathError(f"image file {rel!r} is not a regular file", "missing image file")
    return path


def file_facts(path: Path) -> tuple[str, int, int, int]:
    """sha256, size and pixel size of an image file.

    Raises:
        ValueError: the file cannot be read, or Pillow cannot decode it.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read image {path.name!r} ({exc.strerror or exc})") from exc
    try:
        with PILImage.open(path) as img:
            img.load()
            width, height = img.size
    except Exception as exc:  # Pillow raises many types for broken files
        raise ValueError(
            f"cannot decode image {path.name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    return hashlib.sha256(data).hexdigest(), len(data), width, height


def read_images(
    root: Path, crs: CRS, locator: geo.RegionLocator, report: Report, show: bool | None
) -> list[ImageRecord]:
    """The images of images.csv (none when the file is absent) that lie in a region and
    decode; rows that cannot be used are skipped and reported."""
    if not is_file(root / IMAGES):
        return []
    reader = CsvReader(root, IMAGES, ["path", "kind", "lon", "lat"], report)
    batch = PointBatch(IMAGES, crs, geo.Reprojector(crs))
    parsed: list[tuple[int, str, str, float | None]] = []
    seen: dict[str, int] = {}
    for line, row in reader:
        kind = row["kind"].strip().lower()
        if kind not in ("remote", "street"):
            report.skip(
                IMAGES,
                line,
                f"kind {geo.short(row['kind'])} is neither 'remote' nor 'street'",
                kind="unknown image kind",
            )
            continue
        try:
            rel = _image_path(row["path"], root)
        except _PathError as exc:
            report.skip(IMAGES, line, str(exc), kind=exc.kind)
            continue
        try:
            x, y = geo.number(row["lon"], "lon"), geo.number(row["lat"], "lat")
            h = row.get("heading", "").strip()
            heading = geo.number(h, "heading") % 360.0 if h else None
        except ValueError as exc:
            report.skip(IMAGES, line, str(exc), kind="unparsable row")
            continue
        if rel in seen:
            report.skip(
                IMAGES,
                line,
                f"path {rel!r} is listed twice (first on line {seen[rel]})",
                kind="duplicate image path",
            )
            continue
        seen[rel] = line
        batch.add(line, x, y)
        parsed.append((line, rel, kind, heading))
    lon, lat, region = batch.resolve(locator, report, "image")
    batch.check_crs()
    out: list[ImageRecord] = []
    todo = [(i, p) for i, p in enumerate(parsed) if region[i] >= 0]
    for i, (line, rel, kind, heading) in progress(todo, desc="images", enabled=show, unit="img"):
        try:
            path = _image_file(root, rel)
        except _PathError as exc:
            report.skip(IMAGES, line, str(exc), kind=exc.kind)
            continue
        try:
            sha, size, width, height = file_facts(path)
        except ValueError as exc:
            report.skip(IMAGES, line, str(exc), kind="undecodable image")
            continue
        out.append(
            ImageRecord(
                line,
                rel,
                kind,
                float(lon[i]),
                float(lat[i]),
                heading,
                sha,
                size,
                width,
                height,
                int(region[i]),
            )
        )
    return out
