"""Reading a city bundle (``docs/city-bundle.md``) into validated, lon/lat records.

Reading touches no database. Fatal defects (a missing required file or column, bad regions,
an unknown or wrong CRS) raise :class:`~musecl_store.errors.BundleError` before anything is
written; row-level defects are skipped and recorded in the
:class:`~musecl_store.bundle.report.Report` with file, line and reason. Each file has its
reader module (``city``, ``regions``, ``pois``, ``trips``, ``images``, ``indicators``,
``census``); this one reads them in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import shapely

from musecl_store import geo
from musecl_store.bundle.census import CensusLayerRecord, read_census
from musecl_store.bundle.city import CitySpec, read_city
from musecl_store.bundle.files import (
    BOUNDARY,
    CENSUS_DIR,
    IMAGES,
    INDICATORS,
    MAX_CRS_NAME,
    MAX_NAME,
    MAX_REGION_ID,
    POIS,
    REGIONS,
    TRIPS,
    is_file,
)
from musecl_store.bundle.images import ImageRecord, read_images
from musecl_store.bundle.indicators import Indicators, read_indicators
from musecl_store.bundle.pois import PoiTable, read_pois
from musecl_store.bundle.regions import RegionRecord, read_regions
from musecl_store.bundle.report import Report
from musecl_store.bundle.trips import Mobility, read_trips
from musecl_store.errors import BundleNotFoundError

__all__ = ["MAX_CRS_NAME", "MAX_H3_CELLS", "MAX_NAME", "MAX_REGION_ID", "Bundle", "read_bundle"]

# What the read hands its file readers, read at each call (tests shrink them to reach the
# chunked and refused paths with a small bundle).
MAX_H3_CELLS = 1_000_000  # a boundary tiled into more cells than this is refused
_CHUNK = 100_000  # rows of pois.csv and trips.csv parsed before their points are located
_id_hash = hash  # str -> 64-bit int, for poi_id duplicates (a test swaps in one that collides)


@dataclass
class Bundle:
    """Everything a bundle holds, in EPSG:4326, with points assigned to region indexes."""

    root: Path
    city: CitySpec
    regions: list[RegionRecord]
    pois: PoiTable
    images: list[ImageRecord]
    mobility: Mobility
    indicators: Indicators
    census: list[CensusLayerRecord]
    report: Report
    files: dict[str, bool] = field(default_factory=dict)


def read_bundle(path: str | Path, *, show_progress: bool | None = None) -> Bundle:
    """Read and validate a whole city bundle.

    Args:
        path: the bundle directory.
        show_progress: progress bars on stderr (``None``: when stderr is a terminal).

    Raises:
        BundleNotFoundError: the directory or a required file is missing.
        BundleError: a fatal defect; the message names the file (and line or feature).
    """
    try:
        root = Path(path).expanduser().resolve()
        found = root.is_dir()
    except (OSError, RuntimeError, ValueError):  # a NUL in the path, a symlink loop
        found = False
    if not found:
        raise BundleNotFoundError(f"bundle directory {str(path)!r} does not exist")
    report = Report()
    city = read_city(root)
    crs = geo.parse_crs(city.crs)
    if not is_file(root / POIS):  # check every required file before the slow work
        raise BundleNotFoundError(f"required file {POIS} is missing from {root}", file=POIS)
    regions, is_h3 = read_regions(root, city, report, max_cells=MAX_H3_CELLS)
    if is_h3:
        locator = geo.RegionLocator([], [r.region_id for r in regions])
    else:
        locator = geo.RegionLocator(list(shapely.from_wkb([r.wkb for r in regions])))
    show = show_progress
    pois = read_pois(root, crs, locator, report, show, chunk=_CHUNK, id_hash=_id_hash)
    mobility = read_trips(root, crs, locator, len(regions), report, show, chunk=_CHUNK)
    images = read_images(root, crs, locator, report, show)
    indicators = read_indicators(root, {r.region_id: i for i, r in enumerate(regions)}, report)
    census = read_census(root, crs, report)
    files = {
        f: (root / f).exists() for f in (REGIONS, BOUNDARY, TRIPS, IMAGES, INDICATORS, CENSUS_DIR)
    }
    return Bundle(root, city, regions, pois, images, mobility, indicators, census, report, files)
