"""The points of a CSV file (POIs, trip ends, images), a chunk at a time: reprojected to
lon/lat, located in a region, and the ones off the globe or in no region reported."""

from __future__ import annotations

import numpy as np
from pyproj import CRS

from musecl_store import geo
from musecl_store.bundle.report import Report
from musecl_store.errors import BundleError

_WRONG_CRS_SHARE = 0.5  # more than this share of a file's points off the globe: the CRS is wrong


class PointBatch:
    """Collects parsed x/y points of one file, then reprojects, checks and locates them."""

    def __init__(self, name: str, crs: CRS, reprojector: geo.Reprojector):
        self.name, self.crs, self.reprojector = name, crs, reprojector
        self.lines: list[int] = []
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.off_globe = 0
        self.seen = 0

    def add(self, line: int, x: float, y: float) -> None:
        self.lines.append(line)
        self.xs.append(x)
        self.ys.append(y)

    def resolve(
        self, locator: geo.RegionLocator, report: Report, what: str = "point"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns lon, lat and region index (-1 = skipped and reported) per added point."""
        xs, ys = np.asarray(self.xs, dtype=float), np.asarray(self.ys, dtype=float)
        lon, lat = self.reprojector.points(xs, ys)
        ok = geo.lonlat_ok(lon, lat)
        region = locator.locate(lon, lat)
        region[~ok] = -1
        self.seen += len(self.lines)
        self.off_globe += int((~ok).sum())
        for i in np.flatnonzero(region < 0):
            line = self.lines[i]
            if not ok[i]:
                report.skip(
                    self.name,
                    line,
                    f"{what} ({xs[i]:.6g}, {ys[i]:.6g}) is not a valid "
                    f"position in {self.crs.to_string()}",
                    kind=f"{what} off the globe",
                )
            else:
                report.skip(
                    self.name,
                    line,
                    f"{what} ({lon[i]:.6f}, {lat[i]:.6f}) falls in no region",
                    kind=f"{what} in no region",
                )
        self.lines, self.xs, self.ys = [], [], []
        return lon, lat, region

    def check_crs(self) -> None:
        if self.seen and self.off_globe / self.seen > _WRONG_CRS_SHARE:
            raise BundleError(
                f"{self.off_globe} of {self.seen} coordinates are not valid longitude/latitude "
                f"once "
                f'read as {self.crs.to_string()}; the CRS is wrong — set "crs" in city.json',
                file=self.name,
            )
