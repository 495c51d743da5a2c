"""Load benchmark of `musecl serve`: `GET /api/cities/{city}/similar?region=...&k=10` on
loopback at 1, 10 and 100 concurrent clients, each level for a bounded time; throughput and
p50/p99 latency, and any non-200 answer counted. Prints JSON; the README quotes it.

Two stores, both SpatiaLite files (the default):
- the demo city (`--demo-regions`, trained with a short config: the served vectors have the
  product's shape, 64-d, and serving cost does not depend on how well they were trained);
- a synthetic embedding set of `--big` regions (H3 cells, clustered 64-d vectors written
  straight into the store), for a city-of-a-country size.

The server runs as `musecl serve` in its own process; the clients are one asyncio process
(httpx) on the same machine, so on a 2-core box they compete with the server for the CPU.

Usage: .venv/bin/python bench/serve.py [--demo-regions 600] [--big 100000] [--seconds 10]
       [--clients 1 10 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h3
import httpx
import numpy as np
from sqlalchemy import insert, select

from musecl_store import geo
from musecl_store.demo import make_demo_city
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.store.engine import create_engine, resolve_url, transaction
from musecl_store.store.schema import ensure_schema
from musecl_store.store.tables import City, ModelVersion, Region, Revision
from musecl_store.store.vectors import put_embeddings
from training.config import TrainConfig
from training.trainer import train_city

SHORT_TRAINING = {"epochs": 1, "fused_epochs": 4, "image_size": 32, "batch_size": 32}


def demo_store(folder: Path, regions: int) -> tuple[str, str]:
    make_demo_city(folder / "city", seed=0, regions=regions, show_progress=False)
    url = resolve_url(str(folder / "demo.sqlite"))
    engine = create_engine(url)
    ensure_schema(engine)
    with transaction(engine) as s:
        ingest_bundle(s, folder / "city", show_progress=False)
    config = TrainConfig.from_dict({**SHORT_TRAINING, "checkpoint_dir": str(folder / "ckpt")})
    train_city(engine, "demo-0", config, show_progress=False, log=lambda m: None)
    engine.dispose()
    return url, "demo-0"


def big_store(folder: Path, n: int, dim: int = 64) -> tuple[str, str]:
    """A city of ``n`` H3 cells (resolution 9) with clustered fused vectors, no evidence."""
    centre = h3.latlng_to_cell(47.37, 8.54, 9)
    ring = 0
    cells: list[str] = []
    while len(cells) < n:
        ring += 1
        cells = sorted(h3.grid_disk(centre, ring))
    cells = cells[:n]
    url = resolve_url(str(folder / "big.sqlite"))
    engine = create_engine(url)
    ensure_schema(engine)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(n // 50, 1), dim)).astype(np.float32)
    vecs = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, dim))
    with transaction(engine) as s:
        rev = Revision(operation="ingest", summary={"bench": "serve"})
        s.add(rev)
        s.flush()
        city = City(
            name="big",
            crs="EPSG:4326",
            h3_resolution=9,
            source_path=str(folder),
            meta={},
            revision=rev.id,
        )
        s.add(city)
        s.flush()
        rows = []
        for cell in cells:
            poly = geo.cell_polygon(cell)
            rows.append(
                {
                    "city_id": city.id,
                    "region_id": cell,
                    "geom": geo.to_ewkt(geo.polygonal(poly)),
                    "centroid": geo.to_ewkt(poly.centroid),
                    "h3_cell": cell,
                    "area_km2": geo.area_km2(poly),
                    **{
                        f"hash_{m}": "-"
                        for m in ("geometry", "poi", "remote", "street", "mobility", "indicators")
                    },
                    "revision": rev.id,
                }
            )
        for i in range(0, n, 5000):
            s.execute(insert(Region), rows[i : i + 5000])
        pks = list(
            s.scalars(select(Region.id).where(Region.city_id == city.id).order_by(Region.region_id))
        )
        mv = ModelVersion(
            city_id=city.id,
            config={},
            seed=0,
            data_revision=rev.id,
            library_versions={},
            metrics={},
            checkpoint_path="",
            active=True,
        )
        s.add(mv)
        s.flush()
        put_embeddings(s, mv.id, "fused", pks, vecs.astype(np.float32), rev.id)
    engine.dispose()
    return url, "big"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def region_ids(url: str, city: str) -> list[str]:
    engine = create_engine(url)
    with transaction(engine) as s:
        ids = list(s.scalars(select(Region.region_id).join(City).where(City.name == city)))
    engine.dispose()
    return ids


async def load(
    base: str, city: str, ids: list[str], clients: int, seconds: float, k: int
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    rng = np.random.default_rng(clients)
    picks = [ids[i] for i in rng.integers(0, len(ids), 1_000_000 if len(ids) else 0)]
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.get(
                    f"/api/cities/{city}/similar", params={"region": picks[i % len(picks)], "k": k}
                )
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(lat),
        "throughput_rps": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def serve_and_load(url: str, city: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "MUSECL_INDEX_DIR": str(folder / f"index-{city}"), "MUSECL_PROGRESS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "musecl_store.cli", "--db", url, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"musecl serve did not start: {proc.stderr.read()!r}")
            time.sleep(0.2)
        ids = region_ids(url, city)
        t0 = time.perf_counter()  # the first search builds the FAISS index
        first = httpx.get(
            base + f"/api/cities/{city}/similar",
            params={"region": ids[0], "k": args.k},
            timeout=600,
        )
        first.raise_for_status()
        out: dict[str, Any] = {
            "city": city,
            "regions": len(ids),
            "first_query_s": round(time.perf_counter() - t0, 3),
            "levels": [],
        }
        for clients in args.clients:
            level = asyncio.run(load(base, city, ids, clients, args.seconds, args.k))
            print(f"{city} x{clients}: {level}", file=sys.stderr, flush=True)
            out["levels"].append(level)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--demo-regions", type=int, default=600)
    ap.add_argument("--big", type=int, default=100_000, help="regions of the synthetic set")
    ap.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--stores", nargs="+", default=["demo", "big"], choices=["demo", "big"])
    args = ap.parse_args()
    stores = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "demo" in args.stores:
            t0 = time.perf_counter()
            url, city = demo_store(folder, args.demo_regions)
            print(f"demo store in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            stores.append(serve_and_load(url, city, folder, args))
        if "big" in args.stores:
            t0 = time.perf_counter()
            url, city = big_store(folder, args.big)
            print(
                f"{args.big}-region store in {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            stores.append(serve_and_load(url, city, folder, args))
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "machine": {
                    "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                },
                "endpoint": "GET /api/cities/{city}/similar?region=ID&k=10",
                "seconds_per_level": args.seconds,
                "stores": stores,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
