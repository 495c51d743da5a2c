"""Scale benchmark: wall time and peak memory of each step at 10k, 100k (and 1M) regions.

For each size a synthetic bundle is written fast (no rendering): H3 cells (resolution 10)
as regions, ``--pois`` POIs and ``--trips`` trips per region, indicators for every region,
and images for a sample of ``--images`` regions. Each step then runs as its own process
(``musecl ...`` on a SpatiaLite store), so its peak RSS is its own:

- ``ingest``: the bundle into an empty store;
- ``vectors``: (setup, not a product step) one model version of random 128-d fused vectors
  for every region, written with ``put_embeddings``;
- ``export``: every region's vector to CSV;
- ``features_points``: the vectors of the regions under 10,000 points (``--points``);
- ``index_build``: the FAISS index of the model version;
- ``similar``: one search by region id (opens the index, checks it against the database).

``--steps`` runs a subset. The product steps need the store that ``ingest`` and ``vectors``
made: when they are not asked for, they still run (implicitly, and are reported with
``"implicit": true``) unless ``--keep DIR`` holds the store of an earlier run of that size,
which is then reused as it is. ``--keep DIR`` keeps each size's bundle, store and index under
``DIR/<size>`` instead of a temporary folder, so a large size is generated and ingested once.
Asking for ``ingest`` (or ``vectors``) starts that size's store afresh. ``similar`` opens the
index that ``index_build`` wrote; without one (no ``index_build`` in this or an earlier kept
run) its figure includes building the index.

Training and (re-)embedding are not in it: they encode every POI text and image with the
networks, which on this machine's 2 CPU cores takes hours at 100k regions (see the README).

Prints JSON: per size and step, seconds and peak RSS (MiB); per step, the growth exponent
of peak RSS and of time between the two largest sizes (log ratio / log size ratio; 0 is flat,
1 is linear).

Usage: .venv/bin/python bench/scale.py [--sizes 10000 100000] [--pois 3] [--trips 2]
       [--steps export index_build ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h3
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CENTRE = (8.54, 47.37)
RESOLUTION = 10


def write_bundle(out: Path, n: int, pois: int, trips: int, images: int, seed: int = 0) -> None:
    """A valid bundle of ``n`` H3 cells (see docs/city-bundle.md), written in seconds."""
    rng = np.random.default_rng(seed)
    origin = h3.latlng_to_cell(CENTRE[1], CENTRE[0], RESOLUTION)
    k = 0
    while 3 * k * (k + 1) + 1 < n:
        k += 1
    cells = sorted(h3.grid_disk(origin, k))[:n]
    out.mkdir(parents=True)
    (out / "city.json").write_text(json.dumps({"name": f"scale-{n}", "crs": "EPSG:4326"}))
    centres = np.array([h3.cell_to_latlng(c)[::-1] for c in cells])  # lon, lat
    with (out / "regions.geojson").open("w") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for i, c in enumerate(cells):
            ring = [[lon, lat] for lat, lon in h3.cell_to_boundary(c)]
            ring.append(ring[0])
            sep = ",\n" if i else ""
            f.write(
                f'{sep}{{"type": "Feature", "properties": {{"region_id": "{c}"}}, '
                f'"geometry": {{"type": "Polygon", "coordinates": [{json.dumps(ring)}]}}}}'
            )
        f.write("\n]}\n")
    jitter = 0.0002  # well inside a resolution-10 cell (~65 m across)
    cats = ["restaurant", "school", "shop", "park", "office", "bar", "clinic", "bank"]
    with (out / "pois.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["poi_id", "lon", "lat", "name", "category", "text"])
        pid = 0
        for lon, lat in centres:
            for _ in range(pois):
                dx, dy = rng.uniform(-jitter, jitter, 2)
                cat = cats[pid % len(cats)]
                w.writerow(
                    [f"p{pid}", f"{lon + dx:.7f}", f"{lat + dy:.7f}", f"{cat} {pid}", cat, ""]
                )
                pid += 1
    with (out / "trips.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["origin_lon", "origin_lat", "dest_lon", "dest_lat"])
        for i in range(n * trips):
            a, b = centres[i % n], centres[rng.integers(n)]
            w.writerow([f"{a[0]:.7f}", f"{a[1]:.7f}", f"{b[0]:.7f}", f"{b[1]:.7f}"])
    with (out / "indicators.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["region_id", "population_density"])
        for c, v in zip(cells, rng.lognormal(8, 1, n), strict=True):
            w.writerow([c, f"{v:.1f}"])
    from PIL import Image

    (out / "images").mkdir()
    with (out / "images.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "kind", "lon", "lat"])
        for j, i in enumerate(rng.choice(n, min(images, n), replace=False)):
            path = f"images/remote_{j}.png"
            Image.new("RGB", (32, 32), tuple(int(x) for x in rng.integers(0, 255, 3))).save(
                out / path
            )
            w.writerow([path, "remote", f"{centres[i][0]:.7f}", f"{centres[i][1]:.7f}"])
    with (out / "points.csv").open("w", newline="") as f:  # for features --points
        w = csv.writer(f)
        w.writerow(["lon", "lat"])
        for i in rng.integers(0, n, 10_000):
            w.writerow([f"{centres[i][0]:.7f}", f"{centres[i][1]:.7f}"])


def step(name: str, code: str, args: list[str], env: dict[str, str], work: Path) -> dict[str, Any]:
    """Run ``code`` (Python) in a fresh process; its wall time and peak RSS."""
    peak = work / f"{name}.peak"
    wrapper = (
        "import atexit, resource, sys\n"
        f"atexit.register(lambda: open({str(peak)!r}, 'w').write("
        "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n" + code
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(int(peak.read_text()) / 1024, 1)}


CLI = "import sys\nfrom musecl_store.cli import main\nsys.argv[0] = 'musecl'\nmain()\n"
VECTORS = """
import sys
import numpy as np
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.vectors import put_embeddings
from musecl_store.store.tables import ModelVersion, Region, Revision
engine = create_engine(sys.argv[1])
with transaction(engine, write=True) as s:
    pks = [pk for (pk,) in s.query(Region.id).order_by(Region.id)]
    city = s.query(Region.city_id).first()[0]
    mv = ModelVersion(city_id=city, seed=0, data_revision=0, checkpoint_path="-", active=True)
    rev = Revision(operation="train", city_id=city)
    s.add_all([mv, rev])
    s.flush()
    rng = np.random.default_rng(0)
    for a in range(0, len(pks), 100_000):
        part = pks[a : a + 100_000]
        put_embeddings(s, mv.id, "fused", part, rng.standard_normal((len(part), 128)), rev.id)
"""


STEPS = ("ingest", "vectors", "export", "features_points", "index_build", "similar")
SETUP = ("ingest", "vectors")
_READY = "store.ready"  # in a kept size's folder once ingest and vectors have both run


def run_size(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bundle = work / f"bundle-{n}"
    db = work / f"store-{n}.sqlite"
    steps = set(args.steps)
    out: dict[str, Any] = {}
    fresh = bool(steps & set(SETUP)) or not (work / _READY).exists()
    if fresh:  # a new store: bundle (if not kept), ingest and vectors
        (work / _READY).unlink(missing_ok=True)
        for path in work.glob(f"store-{n}.sqlite*"):
            path.unlink()
        shutil.rmtree(work / f"idx-{n}", ignore_errors=True)
        if not (bundle / "points.csv").exists():
            shutil.rmtree(bundle, ignore_errors=True)
            t0 = time.perf_counter()
            write_bundle(bundle, n, args.pois, args.trips, args.images)
            out["bundle_written_s"] = round(time.perf_counter() - t0, 1)
    env = {
        **os.environ,
        "MUSECL_DATABASE_URL": str(db),
        "MUSECL_INDEX_DIR": str(work / f"idx-{n}"),
        "MUSECL_PROGRESS": "0",
    }
    city = f"scale-{n}"
    first = next(iter(csv.DictReader((bundle / "indicators.csv").open())))["region_id"]
    commands: dict[str, tuple[str, str, list[str]]] = {
        "ingest": ("ingest", CLI, ["ingest", str(bundle)]),
        "vectors": ("vectors", VECTORS, [f"sqlite:///{db}"]),
        "export": (
            "export", CLI,
            ["export", "--city", city, "--format", args.export_format, "--out",
             str(work / f"e.{args.export_format}")],
        ),
        "features_points": (
            "features", CLI,
            ["features", "--city", city, "--points", str(bundle / "points.csv"), "--out",
             str(work / "f.csv")],
        ),
        "index_build": ("index", CLI, ["index", "build", "--city", city]),
        "similar": ("similar", CLI, ["similar", "--city", city, first, "--json"]),
    }  # fmt: skip
    for name in STEPS:
        implicit = fresh and name in SETUP and name not in steps
        if name in steps or implicit:
            out[name] = step(*commands[name][:2], commands[name][2], env, work)
            if implicit:
                out[name]["implicit"] = True
        if fresh and name == SETUP[-1]:
            (work / _READY).touch()
    print(json.dumps({n: out}), file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--pois", type=int, default=3, help="POIs per region")
    ap.add_argument("--trips", type=int, default=2, help="trips per region")
    ap.add_argument("--images", type=int, default=1000, help="regions with an image")
    ap.add_argument(
        "--steps", nargs="+", choices=STEPS, default=list(STEPS), help="steps to measure"
    )
    ap.add_argument(
        "--keep", type=Path, help="keep (and reuse) each size's bundle, store and index here"
    )
    ap.add_argument(
        "--export-format", choices=("csv", "geojson", "parquet"), default="csv",
        help="format of the export step",
    )  # fmt: skip
    args = ap.parse_args()
    out: dict[str, Any] = {
        "benchmark": "scale",
        "backend": "spatialite",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "per_region": {"pois": args.pois, "trips": args.trips},
        "steps": [name for name in STEPS if name in args.steps],
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            work = (args.keep or Path(tmp)) / str(n)
            work.mkdir(parents=True, exist_ok=True)
            out["sizes"][n] = run_size(n, args, work)
    sizes = sorted(out["sizes"])
    if len(sizes) >= 2:
        a, b = sizes[-2], sizes[-1]
        growth: dict[str, Any] = {}
        for name, row in out["sizes"][b].items():
            if isinstance(row, dict) and isinstance(out["sizes"][a].get(name), dict):
                before = out["sizes"][a][name]
                growth[name] = {
                    key: round(math.log(row[key] / before[key]) / math.log(b / a), 2)
                    for key in ("seconds", "peak_rss_mib")
                    if before[key] > 0 and row[key] > 0
                }
        out["growth_exponent"] = {"between": [a, b], **growth}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
