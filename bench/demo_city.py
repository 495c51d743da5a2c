"""Benchmark and calibration of `musecl demo-city`: time to write a city, and the ridge R² that
the true latent factors reach per indicator (the ceiling for any embedding). Prints JSON.

Usage: .venv/bin/python bench/demo_city.py [--seeds 0 1 2] [--regions 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from musecl_store.demo import make_demo_city


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--regions", type=int, default=600)
    args = ap.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            city = make_demo_city(
                Path(tmp) / "city", seed=seed, regions=args.regions, show_progress=False
            )
            seconds = time.perf_counter() - t0
        runs.append(
            {
                "seed": seed,
                "seconds": round(seconds, 2),
                "counts": city.counts,
                "latent_r2": city.latent_r2,
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "demo_city",
                "machine": {
                    "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                },
                "regions": args.regions,
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
