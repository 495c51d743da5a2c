"""``musecl demo-city``: write a synthetic, valid city bundle for a seed.

The city is a disc tiled by H3 cells (``boundary.geojson``; the ingest tiles it). Smooth latent
factors drive every modality and the indicators; ``truth/latent.csv`` (not part of the bundle
contract, ignored by the ingest) keeps them for calibration.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import numpy as np
import shapely
from PIL import Image as PILImage
from shapely.geometry import Polygon, mapping

from musecl_store import geo
from musecl_store.demo import factors as F
from musecl_store.demo import pois as P
from musecl_store.demo import render
from musecl_store.downstream.ridge import ridge_cv_r2
from musecl_store.errors import InputError
from musecl_store.progress import progress

CENTRE = (8.54, 47.37)  # lon, lat of the (fictional) city centre
KM_PER_DEG_LAT = 110.574


@dataclass(frozen=True)
class DemoCity:
    """What was written, and how much of each indicator the true factors explain."""

    path: Path
    name: str
    seed: int
    h3_resolution: int
    counts: dict[str, int]
    latent_r2: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "seed": self.seed,
            "h3_resolution": self.h3_resolution,
            "counts": self.counts,
            "latent_r2": self.latent_r2,
        }


def _km(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    kx = 111.320 * math.cos(math.radians(CENTRE[1]))
    return np.column_stack([(lon - CENTRE[0]) * kx, (lat - CENTRE[1]) * KM_PER_DEG_LAT])


def _boundary(radius_km: float, rng: np.random.Generator) -> Polygon:
    """A slightly irregular disc around CENTRE."""
    theta = np.linspace(0, 2 * np.pi, 97)[:-1]
    phase = rng.uniform(0, 2 * np.pi, 2)
    r = radius_km * (1 + 0.06 * np.sin(3 * theta + phase[0]) + 0.04 * np.sin(5 * theta + phase[1]))
    kx = 111.320 * math.cos(math.radians(CENTRE[1]))
    return Polygon(
        np.column_stack(
            [CENTRE[0] + r * np.cos(theta) / kx, CENTRE[1] + r * np.sin(theta) / KM_PER_DEG_LAT]
        )
    )


def _points_in_cell(cell: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform lon/lat points inside an H3 cell (rejection sampling in its bbox)."""
    poly = geo.cell_polygon(cell)
    minx, miny, maxx, maxy = poly.bounds
    res = h3.get_resolution(cell)
    out: list[tuple[float, float]] = []
    while len(out) < n:
        xs = rng.uniform(minx, maxx, 2 * n + 4)
        ys = rng.uniform(miny, maxy, 2 * n + 4)
        out.extend(
            (x, y)
            for x, y in zip(xs.tolist(), ys.tolist(), strict=True)
            if h3.latlng_to_cell(y, x, res) == cell
        )
    return np.asarray(out[:n])


def _save_png(arr: np.ndarray, path: Path) -> None:
    PILImage.fromarray(arr, "RGB").save(path, format="PNG", optimize=False)


def make_demo_city(
    out: str | Path,
    *,
    seed: int = 0,
    regions: int = 600,
    name: str | None = None,
    h3_resolution: int = 8,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> DemoCity:
    """Write a synthetic city bundle of about ``regions`` H3 cells to ``out``.

    Deterministic for a seed: the same arguments write the same bytes.

    Raises:
        ValueError: bad arguments, or ``out`` exists and is not empty (without ``overwrite``).
    """
    if regions < 7:
        raise InputError(f"--regions must be at least 7, not {regions}")
    if not 5 <= h3_resolution <= 12:
        raise InputError(f"h3 resolution must be between 5 and 12, not {h3_resolution}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out} exists and is not empty; pick another folder or pass --force")
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    name = name or f"demo-{seed}"

    radius = math.sqrt(regions * h3.average_hexagon_area(h3_resolution, "km^2") / math.pi)
    boundary = _boundary(radius, rng)
    cells = geo.h3_cells(boundary, h3_resolution)
    n = len(cells)
    centres = np.array([h3.cell_to_latlng(c)[::-1] for c in cells])  # lon, lat
    f = F.latent_factors(_km(centres[:, 0], centres[:, 1]), radius, rng)
    fr = [{k: float(v[i]) for k, v in f.items()} for i in range(n)]

    (out / "images" / "remote").mkdir(parents=True)
    (out / "images" / "street").mkdir(parents=True)
    (out / "census").mkdir()
    (out / "truth").mkdir()
    _write_city(out, name, seed, h3_resolution, boundary)
    # The steps draw from one generator in this order: the same seed, the same bytes.
    poi_total, n_pois = _write_pois(out / "pois.csv", cells, f, fr, rng)
    has_street, n_remote, n_street = _write_images(out, cells, f, fr, rng, show_progress)
    # -- Trips: a gravity model between homes, jobs and nightlife; some regions uncovered.
    n_trips = _write_trips(out / "trips.csv", cells, centres, f, rng, trips_per_region=40)
    ind = F.indicators(f, poi_total, rng)
    _write_indicators(out / "indicators.csv", cells, ind, rng)
    _write_census(out / "census" / "tracts.geojson", boundary, cells, ind, f, h3_resolution)
    _write_table(out / "truth" / "latent.csv", cells, {k: f[k] for k in F.FACTORS}, "{:.6f}")
    return DemoCity(
        out,
        name,
        seed,
        h3_resolution,
        {
            "regions": n,
            "pois": n_pois,
            "remote_images": n_remote,
            "street_images": n_street,
            "trips": n_trips,
            "regions_with_street": int(has_street.sum()),
        },
        _truth_r2(f, ind, seed),
    )


def _write_city(out: Path, name: str, seed: int, h3_resolution: int, boundary: Any) -> None:
    """city.json and the boundary the cells were cut from."""
    (out / "city.json").write_text(
        json.dumps(
            {
                "name": name,
                "crs": "EPSG:4326",
                "h3_resolution": h3_resolution,
                "generator": "musecl demo-city",
                "seed": seed,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    (out / "boundary.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {"name": name}, "geometry": mapping(boundary)}
                ],
            }
        )
        + "\n",
        encoding="utf-8",
    )


def _write_pois(
    path: Path,
    cells: list[str],
    f: dict[str, np.ndarray],
    fr: list[dict[str, float]],
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """pois.csv: a Poisson number per region, of which 75% are listed in the open data.
    Returns (every region's true POI count, the number listed)."""
    poi_total = rng.poisson(F.poi_rate(f))
    cat_names, cat_p = P.category_probs(f)
    n_pois = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["poi_id", "lon", "lat", "name", "category", "text"])
        for i, cell in enumerate(cells):
            listed = int(rng.binomial(poi_total[i], 0.75))
            if listed == 0:
                continue
            pts = _points_in_cell(cell, listed, rng)
            cats = rng.choice(len(cat_names), size=listed, p=cat_p[i])
            for (lon, lat), c in zip(pts, cats, strict=True):
                n_pois += 1
                cat = cat_names[int(c)]
                w.writerow(
                    [
                        f"p{n_pois:06d}",
                        f"{lon:.7f}",
                        f"{lat:.7f}",
                        P.poi_name(cat, rng),
                        cat,
                        P.poi_text(fr[i], rng),
                    ]
                )
    return poi_total, n_pois


def _write_images(
    out: Path,
    cells: list[str],
    f: dict[str, np.ndarray],
    fr: list[dict[str, float]],
    rng: np.random.Generator,
    show_progress: bool | None,
) -> tuple[np.ndarray, int, int]:
    """images.csv and the tiles: two remote tiles per region; 0-4 street views where the
    provider drove. Returns (which regions have street views, remote count, street count)."""
    n = len(cells)
    has_street = rng.random(n) < 1 / (1 + np.exp(-(1.4 + 1.0 * f["density"])))
    n_remote = n_street = 0
    with (out / "images.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "kind", "lon", "lat", "heading"])
        for i in progress(range(n), desc="render images", enabled=show_progress, unit="region"):
            cell = cells[i]
            for lon, lat in _points_in_cell(cell, 2, rng):
                rel = f"images/remote/{cell}_{n_remote % 2}.png"
                _save_png(render.remote_tile(fr[i], rng), out / rel)
                w.writerow([rel, "remote", f"{lon:.7f}", f"{lat:.7f}", ""])
                n_remote += 1
            if has_street[i]:
                k = int(rng.integers(1, 5))
                for j, (lon, lat) in enumerate(_points_in_cell(cell, k, rng)):
                    rel = f"images/street/{cell}_{j}.png"
                    _save_png(render.street_view(fr[i], rng), out / rel)
                    w.writerow(
                        [rel, "street", f"{lon:.7f}", f"{lat:.7f}", f"{rng.uniform(0, 360):.1f}"]
                    )
                    n_street += 1
    return has_street, n_remote, n_street


def _write_indicators(
    path: Path, cells: list[str], ind: dict[str, np.ndarray], rng: np.random.Generator
) -> None:
    """indicators.csv, with a few unknown values."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["region_id", *F.INDICATORS])
        for i, cell in enumerate(cells):
            w.writerow(
                [cell, *("" if rng.random() < 0.04 else f"{ind[k][i]:g}" for k in F.INDICATORS)]
            )


def _write_table(path: Path, cells: list[str], columns: dict[str, np.ndarray], fmt: str) -> None:
    """A CSV of region_id and one column per entry of ``columns``."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["region_id", *columns])
        for i, cell in enumerate(cells):
            w.writerow([cell, *(fmt.format(v[i]) for v in columns.values())])


def _truth_r2(
    f: dict[str, np.ndarray], ind: dict[str, np.ndarray], seed: int
) -> dict[str, dict[str, float]]:
    """How well the latent truth predicts each indicator (ridge CV R², raw and log1p)."""
    latent = np.column_stack([f[k] for k in F.FACTORS])
    r2: dict[str, dict[str, float]] = {}
    for indicator in F.INDICATORS:
        raw, _ = ridge_cv_r2(latent, ind[indicator], seed=seed)
        logged, _ = ridge_cv_r2(latent, np.log1p(ind[indicator]), seed=seed)
        r2[indicator] = {"raw": round(raw, 4), "log1p": round(logged, 4)}
    return r2


def _write_trips(
    path: Path,
    cells: list[str],
    centres: np.ndarray,
    f: dict[str, np.ndarray],
    rng: np.random.Generator,
    trips_per_region: int,
) -> int:
    n = len(cells)
    xy = _km(centres[:, 0], centres[:, 1])
    homes = np.exp(0.9 * f["density"] - 0.4 * f["industry"])
    jobs = np.exp(0.9 * f["commercial"] + 0.6 * f["industry"] + 0.2 * f["density"])
    night = np.exp(1.2 * f["nightlife"])
    covered = rng.random(n) >= 0.08  # no taxi data for ~8% of regions
    origin_w = (homes + 0.4 * jobs) * covered
    total = trips_per_region * n
    per_origin = rng.multinomial(total, origin_w / origin_w.sum())
    # Candidate points per region, reused for trip ends (keeps generation fast).
    spots = [_points_in_cell(c, 6, rng) for c in cells]
    written = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["origin_lon", "origin_lat", "dest_lon", "dest_lat", "departure_time"])
        for o in np.flatnonzero(per_origin):
            d_km = np.hypot(*(xy - xy[o]).T)
            attract = (jobs + 0.8 * night) * np.exp(-d_km / 3.0) * covered
            dests = rng.choice(n, size=int(per_origin[o]), p=attract / attract.sum())
            for d in dests:
                late = rng.random() < 0.15 + 0.5 / (1 + math.exp(-f["nightlife"][d]))
                hour = int(rng.integers(20, 27)) % 24 if late else int(rng.integers(6, 20))
                op = spots[o][int(rng.integers(0, 6))]
                dp = spots[d][int(rng.integers(0, 6))]
                day, minute = int(rng.integers(1, 29)), int(rng.integers(0, 60))
                when = f"2024-05-{day:02d}T{hour:02d}:{minute:02d}:00"
                w.writerow([f"{op[0]:.7f}", f"{op[1]:.7f}", f"{dp[0]:.7f}", f"{dp[1]:.7f}", when])
                written += 1
    return written


def _write_census(
    path: Path,
    boundary: Polygon,
    cells: list[str],
    ind: dict[str, np.ndarray],
    f: dict[str, np.ndarray],
    resolution: int,
) -> None:
    """Census tracts: coarser H3 parents clipped to the city; population is extensive,
    median income intensive."""
    parent_res = max(resolution - 2, 0)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cells):
        groups.setdefault(h3.cell_to_parent(c, parent_res), []).append(i)
    feats = []
    for k, (parent, members) in enumerate(sorted(groups.items())):
        geom = shapely.intersection(geo.cell_polygon(parent), boundary)
        if geom.is_empty or geom.area == 0:
            continue
        area = [h3.cell_area(cells[i], "km^2") for i in members]
        pop = int(sum(ind["population_density"][i] * a for i, a in zip(members, area, strict=True)))
        income = float(38000 * np.exp(0.25 * np.mean([f["affluence"][i] for i in members])))
        feats.append(
            {
                "type": "Feature",
                "properties": {
                    "tract_id": f"T{k + 1:03d}",
                    "population": pop,
                    "median_income": round(income, 0),
                },
                "geometry": mapping(geom),
            }
        )
    path.write_text(
        json.dumps({"type": "FeatureCollection", "features": feats}) + "\n", encoding="utf-8"
    )
