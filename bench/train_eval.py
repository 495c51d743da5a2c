"""End to end on the demo city: demo-city -> ingest -> train -> evaluate, per seed, timed.

Prints JSON: per seed the seconds of each step and the evaluation records, plus the table of
mean R² (MLP head) over the indicators per embedding. The README quotes it.

Usage: .venv/bin/python bench/train_eval.py [--seeds 0 1 2] [--regions 600] [--raw-target]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from musecl_store.db import open_engine, transaction
from musecl_store.demo import make_demo_city
from musecl_store.evaluation import EMBEDDINGS, EvalConfig, evaluate_city
from musecl_store.ingest import ingest_bundle
from musecl_store.schema import ensure_schema
from training.config import TrainConfig
from training.trainer import train_city


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--regions", type=int, default=600)
    ap.add_argument("--raw-target", action="store_true", help="score raw targets, not log1p")
    args = ap.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            t = {}
            t0 = time.perf_counter()
            make_demo_city(Path(tmp) / "city", seed=seed, regions=args.regions, show_progress=False)
            t["demo_city"] = time.perf_counter() - t0
            engine = open_engine(str(Path(tmp) / "store.sqlite"))
            ensure_schema(engine)
            t0 = time.perf_counter()
            with transaction(engine) as s:
                ingest_bundle(s, Path(tmp) / "city", show_progress=False)
            t["ingest"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            with transaction(engine) as s:
                res = train_city(
                    s,
                    f"demo-{seed}",
                    TrainConfig(seed=seed, checkpoint_dir=str(Path(tmp) / "ckpt")),
                    show_progress=False,
                    log=lambda m: None,
                )
            t["train"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            with transaction(engine) as s:
                records = evaluate_city(
                    s, f"demo-{seed}", cfg=EvalConfig(log_target=not args.raw_target)
                )
            t["evaluate"] = time.perf_counter() - t0
            engine.dispose()
        mean = {
            e: round(
                float(
                    np.mean(
                        [r["r2"] for r in records if r["embedding"] == e and r["head"] == "mlp"]
                    )
                ),
                4,
            )
            for e in EMBEDDINGS
        }
        runs.append(
            {
                "seed": seed,
                "seconds": {k: round(v, 1) for k, v in t.items()},
                "train_plus_evaluate_s": round(t["train"] + t["evaluate"], 1),
                "mean_r2_mlp": mean,
                "epochs_run": {k: len(v) for k, v in res.history.items()},
                "records": records,
            }
        )
        print(
            json.dumps(runs[-1]["mean_r2_mlp"]),
            runs[-1]["seconds"],
            flush=True,
            file=__import__("sys").stderr,
        )
    print(
        json.dumps(
            {
                "benchmark": "train_eval",
                "machine": {
                    "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                },
                "regions": args.regions,
                "log_target": not args.raw_target,
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
