"""FAISS indexes of region embeddings: a cache of the database, never its master.

One index per (model version, kind), under ``<index_dir>/mv<version>-<kind>/``: the FAISS
file and ``stamp.json`` (model version, kind, the newest embedding revision and the row
count it reflects, the store revision at build time, the index type). Opening an index
compares the stamp with the database (one aggregate query): rows with a newer revision are
removed and re-added (exact indexes) or the index is rebuilt (HNSW, which cannot remove);
a changed row count (regions deleted) rebuilds it. :meth:`RegionIndex.search` checks again
before every query, so no answer comes from an index that disagrees with the database.

Vectors are L2-normalised and compared by inner product (cosine similarity). Up to
``exact_threshold`` vectors the index is exact (``IndexFlatIP``); above it, HNSW (default)
or IVF, configurable. When FAISS reports GPUs, exact and IVF indexes search on them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store import dialect
from musecl_store.errors import MuseclError
from musecl_store.summary import store_revision
from musecl_store.tables import EMBEDDING_KINDS, Embedding, ModelVersion

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")


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


def _load_rows(
    session: Session, model_version: int, kind: str, min_revision: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(region pks, normalised float32 vectors) of a model version and kind, in one query."""
    name = dialect.name(session)
    stmt = select(
        Embedding.region_pk, Embedding.dim, dialect.vector_wire(Embedding.vector, name)
    ).where(Embedding.model_version_id == model_version, Embedding.kind == kind)
    if min_revision is not None:
        stmt = stmt.where(Embedding.revision > min_revision)
    rows = session.execute(stmt.order_by(Embedding.region_pk)).all()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    pks, dims, blobs = zip(*rows, strict=True)
    vecs = dialect.decode_vectors(list(blobs), int(dims[0]), name)
    faiss.normalize_L2(vecs)
    return np.asarray(pks, dtype=np.int64), vecs


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
        pks, vecs = _load_rows(session, model_version, kind)
        if not len(pks):
            raise IndexUnavailableError(
                f"model version {model_version} has no {kind} embeddings to index"
            )
        kind_of_index = options.index_type
        if kind_of_index == "auto":
            kind_of_index = "flat" if len(pks) <= options.exact_threshold else options.approximate
        index = cls._new_index(kind_of_index, vecs, options)
        index.add_with_ids(vecs, pks)
        stamp = Stamp(
            model_version,
            kind,
            revision,
            count,
            int(vecs.shape[1]),
            kind_of_index,
            store_revision(session),
        )
        out = cls(cls.folder_for(index_dir, model_version, kind), index, stamp, options)
        out.save()
        return out

    @staticmethod
    def _new_index(kind: str, vecs: np.ndarray, options: IndexOptions) -> Any:
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
        """Write atomically: a new folder, then a rename; readers see old or new, never half."""
        # Own temporary names: two processes saving the same index never touch each other's.
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=self.folder.name + ".tmp-", dir=self.folder.parent))
        faiss.write_index(self.cpu_index, str(tmp / "index.faiss"))
        (tmp / "stamp.json").write_text(json.dumps(asdict(self.stamp), indent=2))
        old = Path(tempfile.mkdtemp(prefix=self.folder.name + ".old-", dir=self.folder.parent))
        with contextlib.suppress(FileNotFoundError):  # the first save has nothing to move
            self.folder.rename(old / "index")
        try:
            tmp.rename(self.folder)
        except OSError:  # another process put its (equally current) index there first
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
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
        try:
            stamp = Stamp(**json.loads((folder / "stamp.json").read_text()))
            index = faiss.read_index(str(folder / "index.faiss"))
        except (OSError, ValueError, TypeError, RuntimeError):
            out = cls.build(session, index_dir, model_version, kind, options)
            out.rebuilt = True
            return out
        out = cls(folder, index, stamp, options)
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
            pks, vecs = _load_rows(
                session, self.stamp.model_version, self.stamp.kind, self.stamp.revision
            )
            if len(pks):
                self.cpu_index.remove_ids(pks)
                self.cpu_index.add_with_ids(vecs, pks)
            if int(self.cpu_index.ntotal) == count:
                self.caught_up = len(pks)
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
        self._searcher = None

    # ------------------------------------------------------------------ search

    @property
    def on_gpu(self) -> bool:
        return self._gpu_ok() and self.options.use_gpu

    def _gpu_ok(self) -> bool:
        return _gpu_count() > 0 and self.stamp.index_type in ("flat", "ivf")

    def _index(self) -> Any:
        if self._searcher is None:
            self._searcher = self.cpu_index
            if self.on_gpu:  # pragma: no cover - needs faiss-gpu and a GPU
                res = faiss.StandardGpuResources()
                self._searcher = faiss.index_cpu_to_gpu(res, 0, self.cpu_index)
                self._searcher._res = res
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
        return self._index().search(q, max(1, min(k, int(self.cpu_index.ntotal))))

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
