"""Re-embedding benchmark, in one run (prints JSON; the README quotes it with the machine):

1. A 10k-region demo city on the embedded default (SpatiaLite), embedded with a model trained
   on a small demo city. Then 1% of its regions change (POIs renamed in half of them, an
   image re-shot in the other half) and are re-ingested. Timed: ``musecl reembed`` of those
   (incremental, index updated in place, drift report) vs a full re-embed plus an index
   rebuild. Target: the incremental one at least 20x faster.

(Bulk embedding I/O on both backends: bench/bulk_io.py.)

Usage: .venv/bin/python bench/reembed.py [--regions 10000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from musecl_store.demo import make_demo_city
from musecl_store.embedding.reembed import reembed, reembed_and_report
from musecl_store.embedding.run import embed_city
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.search.index import RegionIndex
from musecl_store.store.engine import open_engine, transaction
from musecl_store.store.schema import ensure_schema
from training.config import TrainConfig
from training.trainer import train_city


def edit_one_percent(bundle: Path, n_regions: int, seed: int = 0) -> int:
    """Rename POIs in half of 1% of the regions and re-shoot an image in the other half."""
    import h3
    from PIL import Image

    rng = np.random.default_rng(seed)
    with (bundle / "pois.csv").open(encoding="utf-8", newline="") as f:
        pois = list(csv.DictReader(f))
    with (bundle / "images.csv").open(newline="") as f:
        images = list(csv.DictReader(f))
    cells = sorted({h3.latlng_to_cell(float(p["lat"]), float(p["lon"]), 8) for p in pois})
    k = max(2, n_regions // 100)
    picked = [cells[i] for i in rng.choice(len(cells), k, replace=False)]
    poi_half, img_half = set(picked[: k // 2]), set(picked[k // 2 :])
    for p in pois:
        if h3.latlng_to_cell(float(p["lat"]), float(p["lon"]), 8) in poi_half:
            p["name"] = "Renamed " + p["name"]
    with (bundle / "pois.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(pois[0]))
        w.writeheader()
        w.writerows(pois)
    done = set()
    for im in images:
        cell = h3.latlng_to_cell(float(im["lat"]), float(im["lon"]), 8)
        if cell in img_half and cell not in done:
            Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 255, 3))).save(
                bundle / im["path"]
            )
            done.add(cell)
    return len(poi_half) + len(done)


def part_reembed(regions: int, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    make_demo_city(tmp / "small", seed=0, regions=300, show_progress=False)
    make_demo_city(tmp / "big", seed=1, regions=regions, name="big", show_progress=False)
    out["generate_s"] = round(time.perf_counter() - t0, 1)
    engine = open_engine(str(tmp / "store.sqlite"))
    ensure_schema(engine)
    with transaction(engine) as s:
        ingest_bundle(s, tmp / "small", show_progress=False)
    t0 = time.perf_counter()
    with transaction(engine) as s:
        ingest_bundle(s, tmp / "big", show_progress=False)
    out["ingest_s"] = round(time.perf_counter() - t0, 1)
    mv = train_city(
        engine,
        "demo-0",
        TrainConfig(epochs=1, fusion_epochs=10, checkpoint_dir=str(tmp / "ckpt")),
        show_progress=False,
        log=lambda m: None,
    ).model_version_id
    t0 = time.perf_counter()
    with transaction(engine) as s:
        first = embed_city(s, "big", mv, show_progress=False)
    out["first_embed_s_with_text_encoding"] = round(time.perf_counter() - t0, 1)
    out["regions"] = first["embeddings"]["fused"]
    index_dir = tmp / "index"
    with transaction(engine) as s:
        RegionIndex.build(s, index_dir, mv)
    t0 = time.perf_counter()
    with transaction(engine) as s:
        reembed(s, "big", model_version=mv, all_regions=True, show_progress=False)
    with transaction(engine) as s:
        RegionIndex.build(s, index_dir, mv)
    full = time.perf_counter() - t0
    changed = edit_one_percent(tmp / "big", out["regions"])
    with transaction(engine) as s:
        ingest_bundle(s, tmp / "big", show_progress=False)
    t0 = time.perf_counter()
    report = reembed_and_report(engine, index_dir, "big", model_version=mv, show_progress=False)
    inc = time.perf_counter() - t0
    out.update(
        {
            "changed_regions": changed,
            "reembedded_regions": report["regions"],
            "recomputed": report["recomputed"],
            "full_reembed_plus_index_rebuild_s": round(full, 2),
            "incremental_reembed_s": round(inc, 2),
            "speedup": round(full / inc, 1),
            "index_caught_up_rows": report["index"]["caught_up"],
        }
    )
    engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--regions", type=int, default=10_000)
    args = ap.parse_args()
    out: dict[str, Any] = {
        "benchmark": "reembed",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        out["reembed"] = part_reembed(args.regions, Path(tmp))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
