"""FAISS indexes of region embeddings: a cache of the database, never its master.

One index per (model version, kind), under ``<index_dir>/mv<version>-<kind>/``: FAISS files
``index-<token>.faiss`` and ``current.json``, which names the current one and holds its stamp
(model version, kind, the newest embedding revision and the row count it reflects, the store
revision at build time, the index type). A save writes a new FAISS file, then replaces
``current.json`` in one atomic rename: a reader in any process sees the old index or the new
one, never a half-written file or a missing folder; superseded files are removed a minute
later. Opening an index
compares the stamp with the database (one aggregate query): rows with a newer revision are
removed and re-added (exact indexes) or the index is rebuilt (HNSW, which cannot remove);
a changed row count (regions deleted) rebuilds it. :meth:`RegionIndex.search` checks again
before every query, so no answer comes from an index that disagrees with the database.

Vectors are L2-normalised and compared by inner product (cosine similarity). Up to
``exact_threshold`` vectors the index is exact (``IndexFlatIP``); above it, HNSW (default)
or IVF, configurable. When FAISS reports GPUs, exact and IVF indexes search on them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store import faults
from musecl_store.errors import MuseclError
from musecl_store.store import dialect
from musecl_store.store import vectors as embeddings
from musecl_store.store.check import CheckReport
from musecl_store.store.cities import store_revision
from musecl_store.store.tables import EMBEDDING_KINDS, Embedding, ModelVersion

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
# FAISS scores a batch of queries with BLAS (one matrix product) only above this many queries
# times vectors; below it, vector by vector, ~8x slower per query at 1M vectors. Batches of
# any size take the BLAS path; single queries take numpy's matrix-vector product (below).
FAISS_BLAS_THRESHOLD = int(faiss.cvar.distance_compute_blas_threshold)  # FAISS's own default
faiss.cvar.distance_compute_blas_threshold = 1
_NUMPY_MAX_QUERIES = 2
CURRENT = "current.json"
_GRACE_S = 60.0  # a superseded index file outlives its replacement by this long


class IndexUnavailableError(MuseclError, LookupError):
    """No embeddings to index, or an unknown index type."""


@dataclass(frozen=True)
class IndexOptions:
    """How indexes are built. ``auto`` is exact up to ``exact_threshold`` vectors."""

    index_type: str = "auto"
    exact_threshold: int = 100_000
    approximate: str = "hnsw"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 32
    use_gpu: bool = True
    gpu_shard_above: int = 20_000_000  # vectors; below, every GPU holds a full replica

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise IndexUnavailableError(
                f"index type must be one of {', '.join(INDEX_TYPES)}, not {self.index_type!r}"
            )
        if self.approximate not in ("hnsw", "ivf"):
            raise IndexUnavailableError(
                f"approximate index must be hnsw or ivf, not {self.approximate!r}"
            )


@dataclass(frozen=True)
class Stamp:
    model_version: int
    kind: str
    revision: int  # newest embeddings.revision of (model version, kind) it reflects
    count: int
    dim: int
    index_type: str
    store_revision: int


def _db_state(session: Session, model_version: int, kind: str) -> tuple[int, int]:
    """(newest revision, row count) of a model version's embeddings of one kind."""
    rev, n = session.execute(
        select(func.coalesce(func.max(Embedding.revision), 0), func.count()).where(
            Embedding.model_version_id == model_version, Embedding.kind == kind
        )
    ).one()
    return int(rev), int(n)


def _iter_rows(
    session: Session, model_version: int, kind: str, min_revision: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(region pks, normalised float32 vectors) of a model version and kind, in region pk
    order, from one query, in batches of :data:`~musecl_store.store.vectors.CHUNK_ROWS` rows."""
    name = dialect.name(session)
    version: Any = Embedding.model_version_id
    if min_revision is None:
        # A whole read: steer SQLite onto the unique (region_pk, ...) index, already in pk
        # order (see dialect.no_index). A catch-up reads few rows through the revision index.
        version = dialect.no_index(version, name)
    stmt = select(
        Embedding.region_pk, Embedding.dim, dialect.vector_wire(Embedding.vector, name)
    ).where(version == model_version, Embedding.kind == kind)
    if min_revision is not None:
        stmt = stmt.where(Embedding.revision > min_revision)
    stmt = stmt.order_by(Embedding.region_pk).execution_options(yield_per=embeddings.CHUNK_ROWS)
    result = session.execute(stmt)
    dim: int | None = None
    try:
        for part in result.partitions():
            pks, dims, blobs = zip(*part, strict=True)
            dim = int(dims[0]) if dim is None else dim
            vecs = dialect.decode_vectors(list(blobs), dim, name)  # checks every row's size
            faiss.normalize_L2(vecs)
            yield np.asarray(pks, dtype=np.int64), vecs
    finally:
        result.close()


# Neighbour slots per vector of an HNSW graph: 2 M at level 0, M at each level above, which a
# vector reaches with probability 1/M per level (65.03 for M = 32); a little more.
def _hnsw_slots(m: int) -> int:
    return 2 * m + m // (m - 1) + 2 if m > 1 else 4


def _reserve(index: Any, count: int) -> None:
    """Size the vector storage (and an HNSW graph) of an empty flat or HNSW index for
    ``count`` vectors at once: added batch by batch, std::vector would otherwise grow by
    doubling and hold the old and the new buffer together (up to 1.6x the final size). A
    vector's capacity survives ``resize`` to a smaller size, so the adds fill it in place."""
    inner: Any = faiss.downcast_index(index.index)
    hnsw = getattr(inner, "hnsw", None)
    storage: Any = faiss.downcast_index(inner.storage) if hnsw is not None else inner
    if count <= 0 or not hasattr(storage, "codes"):
        return
    storage.codes.resize(count * storage.code_size)
    storage.codes.resize(0)
    if hnsw is not None:
        hnsw.neighbors.resize(count * _hnsw_slots(int(hnsw.nb_neighbors(1))))
        hnsw.neighbors.resize(0)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_pointer(folder: Path) -> tuple[Stamp, str] | None:
    """(stamp, FAISS file name) of ``current.json``, or None when it is missing or
    unreadable."""
    try:
        pointer = json.loads((folder / CURRENT).read_text())
        stamp, name = Stamp(**pointer["stamp"]), str(pointer["file"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if "/" in name or not name.startswith("index-"):
        return None
    return stamp, name


def _read_current(folder: Path) -> tuple[Stamp, Any] | None:
    """(stamp, FAISS index) that ``current.json`` names, or None when there is none or it
    cannot be read. A file swept away between reading the pointer and opening the file (a
    newer save replaced it) is retried with the newer pointer."""
    for _attempt in range(5):
        pointer = read_pointer(folder)
        if pointer is None:
            return None
        stamp, name = pointer
        try:
            return stamp, faiss.read_index(str(folder / name))
        except RuntimeError:  # faiss says "could not open" for a missing file, too
            if (folder / name).exists():
                return None  # there but unreadable: rebuild
    return None


def _sweep(folder: Path, keep: str) -> None:
    """Remove index files (and leftovers of killed saves) that are not ``keep`` and older
    than the grace period: a reader that read the old pointer has long opened its file."""
    now = time.time()
    for path in folder.iterdir():
        if path.name in (keep, CURRENT):
            continue
        try:
            if now - path.stat().st_mtime > _GRACE_S:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
        except FileNotFoundError:  # another process swept it
            pass


def drop_index_folders(index_dir: str | Path, model_version: int) -> list[str]:
    """Remove every cached index of a model version (it was deleted); returns the folders."""
    removed = []
    for folder in sorted(Path(index_dir).glob(f"mv{model_version}-*")):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    return removed


def _gpu_count() -> int:
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


class RegionIndex:
    """A FAISS index over one model version's embeddings of one kind (ids = region pks)."""

    def __init__(self, folder: Path, index: Any, stamp: Stamp, options: IndexOptions):
        self.folder, self.cpu_index, self.stamp, self.options = folder, index, stamp, options
        self._searcher: Any = None
        self._sample: tuple[np.ndarray, np.ndarray] | None = None
        self._sample_of: tuple[int, int, int] | None = None
        self.sample_size = 10_000  # reference regions for a search's percentiles
        self.caught_up = 0  # rows refreshed from the change log on the last open
        self.rebuilt = False
        self._flat: tuple[np.ndarray, np.ndarray] | None = None  # (vectors view, ids)

    # ------------------------------------------------------------------ build / persist

    @classmethod
    def folder_for(cls, index_dir: str | Path, model_version: int, kind: str) -> Path:
        return Path(index_dir) / f"mv{model_version}-{kind}"

    @classmethod
    def build(
        cls,
        session: Session,
        index_dir: str | Path,
        model_version: int,
        kind: str = "fused",
        options: IndexOptions | None = None,
    ) -> RegionIndex:
        """Build from the database and save; replaces whatever was there."""
        options = options or IndexOptions()
        if kind not in EMBEDDING_KINDS:
            raise IndexUnavailableError(
                f"kind must be one of {', '.join(EMBEDDING_KINDS)}, not {kind!r}"
            )
        if session.get(ModelVersion, model_version) is None:
            raise IndexUnavailableError(f"model version {model_version} does not exist")
        revision, count = _db_state(session, model_version, kind)
        kind_of_index = options.index_type
        if kind_of_index == "auto":
            kind_of_index = "flat" if count <= options.exact_threshold else options.approximate
        rows = _iter_rows(session, model_version, kind)
        index = cls._add_rows(kind_of_index, rows, options, count)
        if index is None:
            raise IndexUnavailableError(
                f"model version {model_version} has no {kind} embeddings to index"
            )
        stamp = Stamp(
            model_version,
            kind,
            revision,
            count,
            int(index.d),
            kind_of_index,
            store_revision(session),
        )
        out = cls(cls.folder_for(index_dir, model_version, kind), index, stamp, options)
        out.save()
        return out

    @classmethod
    def _add_rows(
        cls,
        kind: str,
        rows: Iterator[tuple[np.ndarray, np.ndarray]],
        options: IndexOptions,
        count: int = 0,
    ) -> Any:
        """A new index of ``kind`` holding ``rows``, added batch by batch; None when there
        are none. ``count``: the number of rows expected (the storage is sized once for it).

        Flat and HNSW indexes hold no copy of the vectors beyond the batch being added. IVF
        trains its centroids on all the vectors, so it gathers them first (one copy)."""
        if kind == "ivf":
            parts = list(rows)
            if not parts:
                return None
            pks = np.concatenate([p for p, _ in parts])
            vecs = np.concatenate([v for _, v in parts])
            del parts
            index = cls._new_index(kind, vecs, options)
            index.add_with_ids(vecs, pks)
            return index
        index = None
        for pks, vecs in rows:
            if index is None:
                index = cls._new_index(kind, vecs, options)
                _reserve(index, count)
            index.add_with_ids(vecs, pks)
        return index

    @staticmethod
    def _new_index(kind: str, vecs: np.ndarray, options: IndexOptions) -> Any:
        """An empty index of ``kind`` for vectors like ``vecs`` (IVF: trained on them;
        flat and HNSW only read their dimension)."""
        d = vecs.shape[1]
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        if kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(d, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = options.hnsw_ef_construction
            hnsw.hnsw.efSearch = options.hnsw_ef_search
            return faiss.IndexIDMap2(hnsw)  # faiss's wrappers keep the inner index alive
        nlist = max(1, min(int(4 * np.sqrt(len(vecs))), len(vecs) // 39 or 1))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vecs)
        ivf.nprobe = min(options.ivf_nprobe, nlist)
        return faiss.IndexIDMap2(ivf)

    def save(self) -> None:
        """Write atomically: a new FAISS file under a name of its own, then ``current.json``
        replaced by a rename. Readers see the old index or the new one, never half of one,
        and the folder never disappears; two processes saving at once each publish a whole
        (equally current) index and the last rename wins."""
        self.folder.mkdir(parents=True, exist_ok=True)
        token = f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:12]}"
        name = f"index-{token}.faiss"
        partial = self.folder / f"{name}.partial"
        faiss.write_index(self.cpu_index, str(partial))
        _fsync(partial)
        os.replace(partial, self.folder / name)
        faults.point("index:written")
        pointer = self.folder / f"{CURRENT}.partial-{token}"
        pointer.write_text(json.dumps({"file": name, "stamp": asdict(self.stamp)}, indent=2))
        _fsync(pointer)
        os.replace(pointer, self.folder / CURRENT)
        faults.point("index:published")
        _sweep(self.folder, keep=name)
        self._searcher = None

    @classmethod
    def open(
        cls,
        session: Session,
        index_dir: str | Path,
        model_version: int,
        kind: str = "fused",
        options: IndexOptions | None = None,
    ) -> RegionIndex:
        """Open the cached index, catching it up with the database (or building it)."""
        options = options or IndexOptions()
        folder = cls.folder_for(index_dir, model_version, kind)
        loaded = _read_current(folder)
        if loaded is None:  # none yet, or unreadable: a cache miss, built from the database
            out = cls.build(session, index_dir, model_version, kind, options)
            out.rebuilt = True
            return out
        out = cls(folder, loaded[1], loaded[0], options)
        out.refresh(session)
        return out

    # ------------------------------------------------------------------ staleness

    def is_current(self, session: Session) -> bool:
        return _db_state(session, self.stamp.model_version, self.stamp.kind) == (
            self.stamp.revision,
            self.stamp.count,
        )

    def refresh(self, session: Session) -> None:
        """Bring the index in line with the database: catch up or rebuild."""
        revision, count = _db_state(session, self.stamp.model_version, self.stamp.kind)
        if (revision, count) == (self.stamp.revision, self.stamp.count):
            return
        if revision >= self.stamp.revision and self.stamp.index_type in ("flat", "ivf"):
            changed = 0
            for pks, vecs in _iter_rows(
                session, self.stamp.model_version, self.stamp.kind, self.stamp.revision
            ):
                self._flat = None
                self.cpu_index.remove_ids(pks)  # batches hold distinct pks: the same end
                self.cpu_index.add_with_ids(vecs, pks)  # state and order as all at once
                changed += len(pks)
            if int(self.cpu_index.ntotal) == count:
                self.caught_up = changed
                self.stamp = Stamp(
                    **{
                        **asdict(self.stamp),
                        "revision": revision,
                        "count": count,
                        "store_revision": store_revision(session),
                    }
                )
                self.save()
                return
        rebuilt = RegionIndex.build(
            session, self.folder.parent, self.stamp.model_version, self.stamp.kind, self.options
        )
        self.cpu_index, self.stamp, self.rebuilt = rebuilt.cpu_index, rebuilt.stamp, True
        self._searcher, self._flat = None, None

    # ------------------------------------------------------------------ search

    @property
    def on_gpu(self) -> bool:
        return self._gpu_ok() and self.options.use_gpu

    def _gpu_ok(self) -> bool:
        return _gpu_count() > 0 and self.stamp.index_type in ("flat", "ivf")

    def _index(self) -> Any:
        """The index searches run on: the CPU one, or its copy on the GPUs (one GPU: a
        copy; several: a replica on each, queries split between them, or shards of the
        vectors above ``gpu_shard_above``)."""
        if self._searcher is None:
            self._searcher = self.cpu_index
            gpus = _gpu_count()
            if self.on_gpu and gpus == 1:  # pragma: no cover - needs faiss-gpu and a GPU
                res = faiss.StandardGpuResources()
                self._searcher = faiss.index_cpu_to_gpu(res, 0, self.cpu_index)
                self._searcher._res = res
            elif self.on_gpu:  # pragma: no cover - needs several GPUs
                co = faiss.GpuMultipleClonerOptions()
                co.shard = int(self.cpu_index.ntotal) > self.options.gpu_shard_above
                self._searcher = faiss.index_cpu_to_all_gpus(self.cpu_index, co=co)
        return self._searcher

    def search(
        self, session: Session, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, region pks) per query vector; -1 pads when fewer exist.

        The stamp is checked against the database first and the index refreshed if stale.
        """
        self.refresh(session)
        return self.search_snapshot(queries, k)

    def search_snapshot(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the index as it stands, without checking the database: for callers that
        refreshed it already in this transaction, or that compare with a known earlier state
        (the re-embed drift report)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32).copy()
        if q.shape[1] != self.stamp.dim:
            raise IndexUnavailableError(
                f"query vectors have {q.shape[1]} dims, the index {self.stamp.dim}"
            )
        faiss.normalize_L2(q)
        k = max(1, min(k, int(self.cpu_index.ntotal)))
        if len(q) <= _NUMPY_MAX_QUERIES and self.stamp.index_type == "flat" and not self.on_gpu:
            return self._flat_search(q, k)
        return self._index().search(q, k)

    def _flat_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of a few queries: one pass over the vectors (numpy's BLAS matrix-vector
        product, at the memory bandwidth), then a partial sort of the scores."""
        if self._flat is None or len(self._flat[1]) != self.cpu_index.ntotal:
            flat = faiss.downcast_index(self.cpu_index.index)
            n, d = int(flat.ntotal), int(flat.d)
            xb = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)  # type: ignore[attr-defined]
            self._flat = (xb, faiss.vector_to_array(self.cpu_index.id_map).astype(np.int64))
        xb, ids = self._flat
        scores = xb @ q.T  # (n, queries): a matrix-vector product that streams xb once
        part = np.argpartition(-scores, k - 1, axis=0)[:k]
        top = np.take_along_axis(scores, part, 0)
        order = np.argsort(-top, axis=0, kind="stable")
        best = np.take_along_axis(part, order, 0)
        return np.ascontiguousarray(np.take_along_axis(top, order, 0).T), ids[best.T]

    def vectors(self, pks: np.ndarray) -> np.ndarray:
        """The stored (normalised) vectors of some regions."""
        if not len(pks):
            return np.zeros((0, self.stamp.dim), np.float32)
        return np.asarray(self.cpu_index.reconstruct_batch(np.asarray(pks, dtype=np.int64)))

    def sample(self, n: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
        """(pks, normalised vectors) of up to ``n`` indexed regions: all of them when the
        index holds no more, else a fixed random sample. The reference against which a
        search score becomes a percentile."""
        if self._sample is None or self._sample_of != (self.stamp.revision, self.stamp.count, n):
            pks = faiss.vector_to_array(self.cpu_index.id_map).astype(np.int64)
            if len(pks) > n:
                pks = np.sort(np.random.default_rng(0).choice(pks, n, replace=False))
            try:
                vecs = self.vectors(pks)
            except RuntimeError:  # an index that cannot give its vectors back (IVF)
                pks, vecs = pks[:0], np.zeros((0, self.stamp.dim), np.float32)
            self._sample = (pks, vecs)
            self._sample_of = (self.stamp.revision, self.stamp.count, n)
        return self._sample

    def status(self) -> dict[str, Any]:
        return {
            **asdict(self.stamp),
            "path": str(self.folder),
            "ntotal": int(self.cpu_index.ntotal),
            "gpu": self.on_gpu,
            "caught_up": self.caught_up,
            "rebuilt": self.rebuilt,
        }


def check_cache(session: Session, index_dir: str | Path, report: CheckReport) -> None:
    """Add the index caches' state under ``index_dir`` to a store check's ``report``: stale,
    unreadable or left over by a killed save (warnings: the next search repairs them)."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        return
    n = 0
    for folder in sorted(index_dir.iterdir()):
        if not folder.is_dir() or not folder.name.startswith("mv"):
            continue
        if ".tmp-" in folder.name or ".old-" in folder.name:
            report.warnings.append(f"index cache: {folder} is left over by a killed save")
            continue
        n += 1
        pointer = read_pointer(folder)
        if pointer is None:
            report.warnings.append(
                f"index cache: {folder} has no readable {CURRENT} (rebuilt on use)"
            )
            continue
        stamp, name = pointer
        if not (folder / name).is_file():
            report.warnings.append(f"index cache: {folder} names a missing file (rebuilt on use)")
        if session.get(ModelVersion, stamp.model_version) is None:
            report.warnings.append(f"index cache: {folder} is of a deleted model version")
            continue
        state = _db_state(session, stamp.model_version, stamp.kind)
        if state != (stamp.revision, stamp.count):
            report.warnings.append(
                f"index cache: {folder} reflects revision {stamp.revision} ({stamp.count} rows), "
                f"the database {state[0]} ({state[1]} rows): caught up on the next search"
            )
        leftovers = [p.name for p in folder.iterdir() if ".partial" in p.name]
        if leftovers:
            report.warnings.append(
                f"index cache: {folder} holds {len(leftovers)} partial file(s) of a killed save "
                "(swept by the next save)"
            )
    report.checked["indexes"] = n
