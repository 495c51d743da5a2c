"""trips.csv: trips aggregated to regions (in/out counts and the origin-destination matrix)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pyproj import CRS

from musecl_store import geo
from musecl_store.bundle.csvfile import CsvReader
from musecl_store.bundle.files import TRIPS, is_file
from musecl_store.bundle.points import PointBatch
from musecl_store.bundle.report import Report
from musecl_store.progress import progress


@dataclass
class Mobility:
    """Trips aggregated to regions: in/out counts and the sparse O/D matrix, as sorted
    unique keys ``origin * n + destination`` (``od_keys``) and their trip counts."""

    inflow: np.ndarray
    outflow: np.ndarray
    od_keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    od_counts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    rows: int = 0

    @property
    def od(self) -> dict[tuple[int, int], int]:
        """The O/D matrix as {(origin, destination): trips} (made on each call)."""
        n = len(self.inflow)
        return {
            divmod(k, n): c
            for k, c in zip(self.od_keys.tolist(), self.od_counts.tolist(), strict=True)
        }

    def od_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Origins, destinations and trip counts, sorted by origin then destination."""
        n = max(len(self.inflow), 1)
        return self.od_keys // n, self.od_keys % n, self.od_counts


def read_trips(
    root: Path,
    crs: CRS,
    locator: geo.RegionLocator,
    n_regions: int,
    report: Report,
    show: bool | None,
    *,
    chunk: int,
) -> Mobility:
    """The trips of trips.csv (none when the file is absent), located ``chunk`` rows at a
    time; a trip end in no region counts for the other end's flow only."""
    mob = Mobility(np.zeros(n_regions, np.int64), np.zeros(n_regions, np.int64))
    if not is_file(root / TRIPS):
        return mob
    reader = CsvReader(root, TRIPS, ["origin_lon", "origin_lat", "dest_lon", "dest_lat"], report)
    rp = geo.Reprojector(crs)
    origins, dests = PointBatch(TRIPS, crs, rp), PointBatch(TRIPS, crs, rp)

    def flush() -> None:
        _, _, o = origins.resolve(locator, report, "trip origin")
        _, _, d = dests.resolve(locator, report, "trip destination")
        np.add.at(mob.outflow, o[o >= 0], 1)
        np.add.at(mob.inflow, d[d >= 0], 1)
        both = (o >= 0) & (d >= 0)
        keys, counts = np.unique(o[both] * n_regions + d[both], return_counts=True)
        keys, inverse = np.unique(np.concatenate([mob.od_keys, keys]), return_inverse=True)
        total = np.zeros(len(keys), np.int64)
        np.add.at(total, inverse, np.concatenate([mob.od_counts, counts]))
        mob.od_keys, mob.od_counts = keys, total

    for line, row in progress(reader, desc="trips", enabled=show, unit="row"):
        try:
            ox, oy = (
                geo.number(row["origin_lon"], "origin_lon"),
                geo.number(row["origin_lat"], "origin_lat"),
            )
            dx, dy = (
                geo.number(row["dest_lon"], "dest_lon"),
                geo.number(row["dest_lat"], "dest_lat"),
            )
        except ValueError as exc:
            report.skip(TRIPS, line, str(exc), kind="unparsable coordinate")
            continue
        origins.add(line, ox, oy)
        dests.add(line, dx, dy)
        mob.rows += 1
        if len(origins.lines) >= chunk:
            flush()
    flush()
    origins.check_crs()
    dests.check_crs()
    return mob
