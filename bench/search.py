"""Search benchmark at 1M x 128: exact FAISS vs numpy, HNSW vs hnswlib at recall@10 >= 0.95,
and the filtered-search path. Prints JSON; the README quotes it with the machine.

The vectors are a Gaussian mixture (2,000 clusters, L2-normalised), a stand-in for region
embeddings, which are far from isotropic; isotropic random vectors are the worst case for
graph and IVF indexes and need a larger efSearch/nprobe for the same recall.

Usage: .venv/bin/python bench/search.py [--n 1000000] [--dim 128] [--queries 1000]
       (hnswlib: pip install '.[bench]'). Add --device-note "..." to label the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import faiss
import numpy as np

from musecl_store.index import IndexOptions, RegionIndex


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))


def timed(fn: Any, repeat: int = 1) -> tuple[Any, float]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--device-note", default="")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, d, nq = args.n, args.dim, args.queries
    centres = rng.normal(size=(2000, d)).astype(np.float32)
    x = centres[rng.integers(0, 2000, n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    faiss.normalize_L2(x)
    q = x[rng.choice(n, nq, replace=False)] + 0.05 * rng.normal(size=(nq, d)).astype(np.float32)
    faiss.normalize_L2(q)
    ids = np.arange(n, dtype=np.int64)
    out: dict[str, Any] = {
        "benchmark": "search",
        "n": n,
        "dim": d,
        "queries": nq,
        "machine": {
            "cpus": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "processor": platform.processor() or platform.machine(),
            "gpus": faiss.get_num_gpus(),
            "note": args.device_note,
        },
    }

    # exact: FAISS flat vs numpy (both batched over all queries)
    flat = RegionIndex._new_index("flat", x, IndexOptions())
    flat.add_with_ids(x, ids)
    (_, truth), t = timed(lambda: flat.search(q, 10))
    out["faiss_flat"] = {"qps": round(nq / t, 1)}

    def numpy_topk() -> np.ndarray:
        res = []
        for i in range(0, nq, 100):
            s = q[i : i + 100] @ x.T
            part = np.argpartition(-s, 10, axis=1)[:, :10]
            order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1)
            res.append(np.take_along_axis(part, order, axis=1))
        return np.concatenate(res)

    found, t = timed(numpy_topk)
    out["numpy_brute_force"] = {"qps": round(nq / t, 1), "recall_at_10": recall_at_10(found, truth)}
    if faiss.get_num_gpus() > 0:  # pragma: no cover - only where a GPU is lent
        res = faiss.StandardGpuResources()
        gflat = faiss.index_cpu_to_gpu(res, 0, flat)
        gflat.search(q[:10], 10)
        (_, gi), t = timed(lambda: gflat.search(q, 10), repeat=3)
        out["faiss_gpu_flat"] = {"qps": round(nq / t, 1), "recall_at_10": recall_at_10(gi, truth)}

    # approximate: FAISS HNSW vs hnswlib, same M and efConstruction, efSearch raised until
    # recall@10 >= 0.95
    opts = IndexOptions()
    (hnsw, build) = timed(lambda: _build_hnsw(x, ids, opts))
    out["faiss_hnsw"] = {
        "build_s": round(build, 1),
        "M": opts.hnsw_m,
        "ef_construction": opts.hnsw_ef_construction,
        **_sweep(lambda ef: _faiss_search(hnsw, q, ef), truth, nq),
    }
    try:
        import hnswlib
    except ImportError:
        out["hnswlib"] = "not installed (pip install hnswlib)"
    else:
        p = hnswlib.Index(space="ip", dim=d)

        def build_hnswlib() -> None:
            p.init_index(max_elements=n, ef_construction=opts.hnsw_ef_construction, M=opts.hnsw_m)
            p.set_num_threads(os.cpu_count() or 1)
            p.add_items(x, ids)

        _, build = timed(build_hnswlib)

        def hnswlib_search(ef: int) -> np.ndarray:
            p.set_ef(ef)
            labels, _ = p.knn_query(q, k=10)
            return labels

        out["hnswlib"] = {
            "build_s": round(build, 1),
            "M": opts.hnsw_m,
            "ef_construction": opts.hnsw_ef_construction,
            **_sweep(hnswlib_search, truth, nq),
        }

    # filtered search, as `similar` does it: a candidate set from SQL (here: a random subset
    # of the given selectivity), then exact scoring of the candidates' vectors.
    filt = {}
    for sel in (0.001, 0.01, 0.1):
        cand = np.sort(rng.choice(n, int(n * sel), replace=False))

        def scored(cand: np.ndarray = cand) -> np.ndarray:
            vecs = flat.reconstruct_batch(cand)  # what RegionIndex.vectors does
            return cand[np.argsort(-(vecs @ q[0]))[:10]]

        _, t = timed(scored, repeat=3)
        filt[f"{sel:.1%}"] = {"candidates": len(cand), "latency_ms": round(1000 * t, 2)}
    out["filtered_exact"] = filt
    print(json.dumps(out, indent=1))


def _build_hnsw(x: np.ndarray, ids: np.ndarray, opts: IndexOptions) -> Any:
    index = RegionIndex._new_index("hnsw", x[:1], opts)
    index.add_with_ids(x, ids)
    return index


def _faiss_search(index: Any, q: np.ndarray, ef: int) -> np.ndarray:
    inner = faiss.downcast_index(index.index)
    inner.hnsw.efSearch = ef
    _, found = index.search(q, 10)
    return found


def _sweep(search: Any, truth: np.ndarray, nq: int) -> dict[str, Any]:
    tried = []
    for ef in (16, 32, 64, 128, 256, 512):
        found, t = timed(lambda ef=ef: search(ef), repeat=2)
        rec = recall_at_10(found, truth)
        tried.append({"ef_search": ef, "recall_at_10": round(rec, 4), "qps": round(nq / t, 1)})
        if rec >= 0.95:
            return {"at_recall_0.95": tried[-1], "sweep": tried}
    return {"at_recall_0.95": None, "sweep": tried}


if __name__ == "__main__":
    main()
