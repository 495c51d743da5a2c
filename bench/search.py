"""Search benchmark at 1M x 128: exact FAISS vs numpy, HNSW vs hnswlib at recall@10 >= 0.95,
and the filtered-search path. Prints JSON; the README quotes it with the machine.

The vectors are a Gaussian mixture (2,000 clusters, L2-normalised), a stand-in for region
embeddings, which are far from isotropic; isotropic random vectors are the worst case for
graph and IVF indexes and need a larger efSearch/nprobe for the same recall.

Usage: .venv/bin/python bench/search.py [--n 1000000] [--dim 128] [--queries 1000]
       (hnswlib: pip install '.[bench]'). Add --device-note "..." to label the machine.

``--batch-verb``: instead, the batch verb against the single one on a synthetic SpatiaLite
store (``--n`` H3 cells with random ``--dim`` vectors, default 20,000 x 128; exact index):
``Store.similar_many`` for ``--queries`` region ids (default 1,000) against as many calls of
``Store.similar``, without filters and with ``exclude_adjacent`` and ``near``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from musecl_store.search.index import IndexOptions, RegionIndex


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
    ap.add_argument(
        "--exact-only", action="store_true", help="Skip the approximate indexes (HNSW, IVF)."
    )
    ap.add_argument(
        "--batch-verb",
        action="store_true",
        help="Time Store.similar_many against Store.similar on a synthetic store.",
    )
    args = ap.parse_args()
    if args.batch_verb:
        n = 20_000 if args.n == ap.get_default("n") else args.n
        print(json.dumps(_batch_verb(n, args.dim, args.queries, args.device_note), indent=1))
        return
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

    out["exact_latency"] = _exact_latency(flat, x, q)
    if args.exact_only:
        print(json.dumps(out, indent=1))
        return

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


def _read_bandwidth(x: np.ndarray) -> float:
    """Bytes per second of one pass over ``x`` with every core (the best of 5)."""
    from concurrent.futures import ThreadPoolExecutor

    parts = np.array_split(x, os.cpu_count() or 1)
    best = float("inf")
    with ThreadPoolExecutor(len(parts)) as pool:
        for _ in range(5):
            t0 = time.perf_counter()
            list(pool.map(lambda p: p.sum(axis=0), parts))  # numpy releases the GIL
            best = min(best, time.perf_counter() - t0)
    return x.nbytes / best


def _exact_latency(flat: Any, x: np.ndarray, q: np.ndarray) -> dict[str, Any]:
    """Exact search as users run it (``RegionIndex.search_snapshot``): single queries (p50,
    p99 against the memory-bandwidth bound of one pass over the vectors) and batches of
    several sizes, beside FAISS with its own BLAS threshold (what musecl ran before)."""
    from musecl_store.search import index as musecl_index
    from musecl_store.search.index import Stamp

    idx = RegionIndex(
        Path("."), flat, Stamp(1, "fused", 1, len(x), x.shape[1], "flat", 1), IndexOptions()
    )
    bandwidth = _read_bandwidth(x)
    out: dict[str, Any] = {
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "bandwidth_bound_ms": round(x.nbytes / bandwidth * 1e3, 1),
    }
    for label, threshold in (
        ("musecl", 1),
        ("faiss_default_threshold", musecl_index.FAISS_BLAS_THRESHOLD),
    ):
        faiss.cvar.distance_compute_blas_threshold = threshold
        fast = musecl_index._NUMPY_MAX_QUERIES
        if label != "musecl":
            musecl_index._NUMPY_MAX_QUERIES = 0  # FAISS for single queries too
        idx.search_snapshot(q[:1], 10)  # warm: first touch of the pages, BLAS threads
        times = []
        for i in range(min(200, len(q))):
            t0 = time.perf_counter()
            idx.search_snapshot(q[i : i + 1], 10)
            times.append(time.perf_counter() - t0)
        ms = np.array(times) * 1e3
        row: dict[str, Any] = {
            "single_p50_ms": round(float(np.percentile(ms, 50)), 1),
            "single_p99_ms": round(float(np.percentile(ms, 99)), 1),
        }
        for bs in (10, 100, 500, 2000):
            if bs <= len(q):
                _, t = timed(lambda bs=bs: idx.search_snapshot(q[:bs], 10), repeat=3)
                row[f"batch_{bs}_qps"] = round(bs / t, 1)
        musecl_index._NUMPY_MAX_QUERIES = fast
        out[label] = row
    faiss.cvar.distance_compute_blas_threshold = 1
    out["single_p50_over_bound"] = round(
        out["musecl"]["single_p50_ms"] / out["bandwidth_bound_ms"], 2
    )
    return out


def _synthetic_store(path: Path, n: int, dim: int) -> tuple[str, list[str]]:
    """A SpatiaLite store of ``n`` H3 cells (resolution 9) around Zurich with one model
    version of random ``dim``-d fused vectors; returns (city, region ids)."""
    import h3
    import shapely

    import musecl_store
    from musecl_store.store.tables import City, ModelVersion, Region, Revision
    from musecl_store.store.vectors import put_embeddings

    origin = h3.latlng_to_cell(47.37, 8.54, 9)
    k = 0
    while 3 * k * (k + 1) + 1 < n:
        k += 1
    cells = sorted(h3.grid_disk(origin, k))[:n]
    rng = np.random.default_rng(0)
    with musecl_store.open(path, create=True) as store, store.session(write=True) as s:
        rev = Revision(operation="ingest")
        s.add(rev)
        s.flush()
        city = City(name="bench", crs="EPSG:4326", h3_resolution=9, source_path="-")
        city.revision = rev.id
        s.add(city)
        s.flush()
        for cell in cells:
            ring = [(lon, lat) for lat, lon in h3.cell_to_boundary(cell)]
            poly = shapely.MultiPolygon([shapely.Polygon(ring)])
            c = poly.centroid
            s.add(
                Region(
                    city_id=city.id,
                    region_id=cell,
                    geom=f"SRID=4326;{poly.wkt}",
                    centroid=f"SRID=4326;POINT({c.x} {c.y})",
                    h3_cell=cell,
                    area_km2=h3.cell_area(cell, "km^2"),
                    **{f"hash_{h}": "-" for h in ("geometry", "poi", "remote", "street")},
                    hash_mobility="-",
                    hash_indicators="-",
                    revision=rev.id,
                )
            )
        s.flush()
        mv = ModelVersion(
            city_id=city.id, seed=0, data_revision=rev.id, checkpoint_path="-", active=True
        )
        train = Revision(operation="train", city_id=city.id)
        s.add_all([mv, train])
        s.flush()
        pks = [pk for (pk,) in s.query(Region.id).order_by(Region.id)]
        put_embeddings(s, mv.id, "fused", pks, rng.standard_normal((len(pks), dim)), train.id)
    return "bench", cells


def _batch_verb(n: int, dim: int, nq: int, note: str) -> dict[str, Any]:
    """Seconds of ``Store.similar_many`` for ``nq`` region ids against ``nq`` calls of
    ``Store.similar`` (each checks the index against the database and searches alone), on
    a warm index; the answers are checked to agree."""
    import tempfile

    import h3

    import musecl_store

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        city, ids = _synthetic_store(Path(tmp) / "bench.sqlite", n, dim)
        out: dict[str, Any] = {
            "benchmark": "similar_many",
            "regions": len(ids),
            "dim": dim,
            "queries": nq,
            "store_built_s": round(time.perf_counter() - t0, 1),
            "machine": {"cpus": os.cpu_count(), "note": note},
        }
        queries = list(np.random.default_rng(1).choice(ids, nq, replace=False))
        lat, lon = h3.cell_to_latlng(ids[len(ids) // 2])
        with musecl_store.open(Path(tmp) / "bench.sqlite", index_dir=Path(tmp) / "idx") as store:
            store.similar(city, queries[0])  # builds the index, warms the caches
            for label, query in (
                ("no_filter", {}),
                ("exclude_adjacent", {"exclude_adjacent": True}),
                ("near_2km", {"near": (lon, lat, 2.0)}),
            ):
                batch, t_batch = timed(lambda q=query: store.similar_many(city, queries, **q))
                single, t_single = timed(
                    lambda q=query: [store.similar(city, r, **q) for r in queries]
                )
                agree = all(
                    list(batch.region_id[batch["query"] == r]) == list(one.region_id)
                    for r, one in zip(queries, single, strict=True)
                )
                out[label] = {
                    "similar_many_s": round(t_batch, 3),
                    "similar_loop_s": round(t_single, 3),
                    "speedup": round(t_single / t_batch, 1),
                    "same_answers": agree,
                }
    return out


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
