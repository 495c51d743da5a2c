"""Embedding a city's regions with a trained MuseCL network (no trainer import needed).

Loads what the network needs from the store (images, POI texts, mobility), runs the image
and text encoders and the fusion module, and writes the four kinds of embeddings. Used by
training for its write-back and by re-embedding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy import sparse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store import faults
from musecl_store.embedding.images import open_checked
from musecl_store.errors import InputError
from musecl_store.hashing import digest
from musecl_store.nn.counts import mobility_features, poi_count_features
from musecl_store.nn.fusion import BRANCHES, VISUAL
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.text import TextEncoder, poi_sentence
from musecl_store.progress import progress
from musecl_store.store.chunks import delete_in, rows_in
from musecl_store.store.cities import get_city
from musecl_store.store.tables import (
    City,
    Embedding,
    Image,
    Mobility,
    ModelVersion,
    OdFlow,
    Poi,
    Region,
    Revision,
    TextEmbedding,
)
from musecl_store.store.vectors import load_embeddings_flags, put_embeddings


@dataclass
class ImageSet:
    """The images of one kind: the region index, path and sha256 of each."""

    region: np.ndarray
    paths: list[str]
    sha256: list[str]


IMAGE_CACHE_MB = 1024
"""Images of one kind held in memory up to this size (``MUSECL_IMAGE_CACHE_MB``); above it,
every batch is decoded from the image files, so memory does not grow with the city."""


def image_cache_bytes() -> int:
    raw = os.environ.get("MUSECL_IMAGE_CACHE_MB", "").strip()
    try:
        mb = float(raw) if raw else IMAGE_CACHE_MB
    except ValueError:
        mb = float("nan")
    if not mb >= 0:
        raise InputError(f"MUSECL_IMAGE_CACHE_MB must be a number of MiB >= 0, not {raw!r}")
    return int(mb * 2**20)


class Pixels:
    """The images of one kind at one size, as uint8 ``(n, 3, size, size)``, indexed like a
    tensor (an index array or tensor, or a slice) one batch at a time.

    When they fit in :func:`image_cache_bytes` they are decoded once and held; otherwise each
    batch is decoded from its files when asked for (bounded memory: a million 64 px tiles
    would take 12 GB). Either way every image is checked against its sha256 as it is read,
    and the pixels are the same.
    """

    def __init__(
        self,
        source: str,
        images: ImageSet,
        size: int,
        desc: str,
        show_progress: bool | None = None,
    ):
        self.source, self.images, self.size = source, images, size
        self._all: torch.Tensor | None = None
        if len(images.paths) * 3 * size * size <= image_cache_bytes():
            rows = np.arange(len(images.paths))
            self._all = self._read(rows, desc, show_progress)

    def __len__(self) -> int:
        return len(self.images.paths)

    @property
    def cached(self) -> bool:
        return self._all is not None

    def __getitem__(self, index: Any) -> torch.Tensor:
        if self._all is not None:
            return self._all[index]
        if isinstance(index, slice):
            rows = np.arange(len(self))[index]
        else:
            rows = np.asarray(index, dtype=np.int64).reshape(-1)
        return self._read(rows)

    def _read(
        self, rows: np.ndarray, desc: str = "", show_progress: bool | None = False
    ) -> torch.Tensor:
        size, imgs = self.size, self.images
        out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
        for j, k in enumerate(
            progress(rows.tolist(), desc=desc, enabled=show_progress, unit="img")
        ):
            img = open_checked(self.source, imgs.paths[k], imgs.sha256[k])
            if img.size != (size, size):
                img = img.resize((size, size))
            out[j] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return out


@dataclass
class CityData:
    """What training and embedding read from the store for one city, in region order."""

    city: City
    region_ids: list[str]
    region_pks: list[int]
    images: dict[str, ImageSet]
    poi_region: np.ndarray
    poi_category: list[str]
    poi_sentence: list[str]
    poi_hash: list[str]
    inflow: np.ndarray
    outflow: np.ndarray
    od: sparse.csr_matrix
    lonlat: np.ndarray  # (n, 2) region centroids
    _pixels: dict[tuple[str, int], Pixels] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.region_ids)

    def only_regions(self, keep: np.ndarray) -> CityData:
        """The same city data, listing only the regions where ``keep`` is true."""
        idx = np.flatnonzero(keep)
        return replace(
            self,
            region_ids=[self.region_ids[i] for i in idx],
            region_pks=[self.region_pks[i] for i in idx],
            lonlat=self.lonlat[idx],
            _pixels={},
        )

    def with_images(self, kind: str, images: ImageSet) -> CityData:
        """The same city data with another image list of one kind (pixels not shared)."""
        return replace(self, images={**self.images, kind: images}, _pixels={})

    def images_of(self, kind: str) -> list[list[int]]:
        """Per region, the indices (into ``images[kind]``) of its images."""
        out: list[list[int]] = [[] for _ in range(self.n)]
        for k, r in enumerate(self.images[kind].region.tolist()):
            out[r].append(k)
        return out

    def pixels(self, kind: str, size: int, show_progress: bool | None = None) -> Pixels:
        """The images of a kind as uint8 (n, 3, size, size) batches (see :class:`Pixels`),
        each checked against its sha256."""
        key = (kind, size)
        if key not in self._pixels:
            self._pixels[key] = Pixels(
                self.city.source_path,
                self.images[kind],
                size,
                f"load {kind} images",
                show_progress,
            )
        return self._pixels[key]


def load_city_data(
    session: Session, city_name: str, *, only: Sequence[int] | None = None, mobility: bool = True
) -> CityData:
    """Read one city's regions, images, POIs and mobility from the store.

    Args:
        only: region pks whose images and POIs to read (all regions are still listed);
            ``None`` reads every region's. Re-embedding a few regions reads only theirs.
        mobility: read in/out counts and the O/D matrix (training needs them, embedding not).
    """
    city = get_city(session, city_name)
    regions = session.execute(
        select(Region.id, Region.region_id, func.ST_X(Region.centroid), func.ST_Y(Region.centroid))
        .where(Region.city_id == city.id)
        .order_by(Region.region_id)
    ).all()
    pks = [r.id for r in regions]
    index = {pk: i for i, pk in enumerate(pks)}
    images: dict[str, ImageSet] = {}
    for kind in VISUAL:
        stmt = select(Image.region_pk, Image.path, Image.sha256).where(
            Image.city_id == city.id, Image.kind == kind
        )
        rows = rows_of(session, stmt.order_by(Image.path), Image.region_pk, only)
        images[kind] = ImageSet(
            np.array([index[r.region_pk] for r in rows], dtype=np.int64),
            [r.path for r in rows],
            [r.sha256 for r in rows],
        )
    pois = rows_of(
        session,
        select(Poi.region_pk, Poi.name, Poi.category, Poi.text, Poi.content_hash)
        .where(Poi.city_id == city.id)
        .order_by(Poi.poi_id),
        Poi.region_pk,
        only,
    )
    n = len(pks)
    inflow, outflow = np.zeros(n), np.zeros(n)
    od = sparse.csr_matrix((n, n), dtype=np.float64)
    if mobility:
        inflow, outflow, od = _mobility(session, city.id, index, n, only)
    return CityData(
        city=city,
        region_ids=[r.region_id for r in regions],
        region_pks=pks,
        images=images,
        poi_region=np.array([index[p.region_pk] for p in pois], dtype=np.int64),
        poi_category=[p.category for p in pois],
        poi_sentence=[poi_sentence(p.name, p.category, p.text) for p in pois],
        poi_hash=[p.content_hash for p in pois],
        inflow=inflow,
        outflow=outflow,
        od=od,
        lonlat=np.array([(r[2], r[3]) for r in regions], dtype=np.float64).reshape(-1, 2),
    )


def rows_of(session: Session, stmt: Any, pk_column: Any, only: Sequence[int] | None) -> list[Any]:
    """Run ``stmt``, restricted to ``only`` region pks (in chunks) when given, keeping order."""
    if only is None:
        return list(session.execute(stmt).all())
    return rows_in(session, stmt, pk_column, sorted(set(only)))


def _mobility(
    session: Session, city_id: int, index: dict[int, int], n: int, only: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray, sparse.csr_matrix]:
    """In/out counts and the O/D matrix; with ``only``, just those regions' counts, O/D rows
    and O/D columns (all that their mobility features need)."""
    inflow, outflow = np.zeros(n), np.zeros(n)
    stmt = (
        select(Mobility.region_pk, Mobility.inflow, Mobility.outflow)
        .join(Region, Region.id == Mobility.region_pk)
        .where(Region.city_id == city_id)
    )
    for pk, i_, o_ in rows_of(session, stmt, Mobility.region_pk, only):
        inflow[index[pk]], outflow[index[pk]] = i_, o_
    od_stmt = (
        select(OdFlow.origin_pk, OdFlow.dest_pk, OdFlow.trips)
        .join(Region, Region.id == OdFlow.origin_pk)
        .where(Region.city_id == city_id)
    )
    if only is None:
        od_rows = list(session.execute(od_stmt).all())
    else:  # rows and columns; a trip within one of them comes twice, once is kept
        seen = {
            (r.origin_pk, r.dest_pk): r
            for col in (OdFlow.origin_pk, OdFlow.dest_pk)
            for r in rows_of(session, od_stmt, col, only)
        }
        od_rows = list(seen.values())
    od = sparse.csr_matrix(
        (
            [r.trips for r in od_rows],
            ([index[r.origin_pk] for r in od_rows], [index[r.dest_pk] for r in od_rows]),
        ),
        shape=(n, n),
        dtype=np.float64,
    )
    return inflow, outflow, od


def text_embeddings(
    session: Session,
    encoder: TextEncoder,
    sentences: Sequence[str],
    hashes: Sequence[str],
    batch_size: int = 64,
    show_progress: bool | None = None,
    pending: list[TextEmbedding] | None = None,
) -> np.ndarray:
    """Sentence embeddings of POIs, served from the store's cache where it has them.

    New ones are encoded in batches. Their cache rows go to ``pending`` when given (the
    caller adds them when it is about to write anyway, so a long run holds no write lock),
    else they are added to the session now.
    """
    out = np.zeros((len(sentences), encoder.dim), dtype=np.float32)
    # The sentence is part of the key, so a changed sentence recipe never hits a stale entry.
    keys = [digest(h, s) for h, s in zip(hashes, sentences, strict=True)]
    cached: dict[str, np.ndarray] = {}
    unique = sorted(set(keys))
    stmt = select(TextEmbedding.content_hash, TextEmbedding.vector).where(
        TextEmbedding.encoder == encoder.name
    )
    for key, vec in rows_in(session, stmt, TextEmbedding.content_hash, unique):
        cached[key] = vec
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cached}.items())
    if todo:
        idx = [i for _, i in todo]
        batches = [idx[i : i + 1024] for i in range(0, len(idx), 1024)]
        new: list[np.ndarray] = []
        for b in progress(batches, desc="encode POI texts", enabled=show_progress, unit="batch"):
            new.append(encoder.encode([sentences[i] for i in b], batch_size))
        vecs = np.concatenate(new)
        for (key, _), vec in zip(todo, vecs, strict=True):
            cached[key] = vec
        rows = [
            TextEmbedding(encoder=encoder.name, content_hash=key, vector=vec)
            for (key, _), vec in zip(todo, vecs, strict=True)
        ]
        if pending is None:
            session.add_all(rows)
        else:
            pending.extend(rows)
    for i, k in enumerate(keys):
        out[i] = cached[k]
    return out


def region_means(values: np.ndarray, region: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` rows per region; returns (means (n, d), has (n,) bool)."""
    sums = np.zeros((n, values.shape[1]), dtype=np.float64)
    np.add.at(sums, region, values)
    counts = np.bincount(region, minlength=n)
    has = counts > 0
    sums[has] /= counts[has, None]
    return sums.astype(np.float32), has


@torch.no_grad()
def encode_images(
    encoder: torch.nn.Module,
    pixels: torch.Tensor | Pixels,
    batch_size: int = 256,
    show_progress: bool | None = False,
) -> np.ndarray:
    """Run an image encoder (eval mode) over uint8 images in batches."""
    encoder.eval()
    starts = range(0, len(pixels), batch_size)
    outs = [
        encoder(pixels[i : i + batch_size].float() / 255.0)
        for i in progress(starts, desc="encode images", enabled=show_progress, unit="batch")
    ]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


@dataclass
class RegionInputs:
    """What the networks read for a list of regions (in order), per branch: a matrix and
    which regions have that branch."""

    visual: dict[str, tuple[np.ndarray, np.ndarray]]  # mean image embedding (n, d), has (n,)
    text: tuple[np.ndarray, np.ndarray]  # mean POI sentence embedding (n, text_dim), has
    poi_counts: np.ndarray | None = None  # (n, categories + 1); None for format-2 models
    mobility: tuple[np.ndarray, np.ndarray] | None = None  # (n, 6) features, has

    @property
    def n(self) -> int:
        return len(self.text[1])

    def fusion_inputs(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The all-branch fusion's inputs and mask, in ``BRANCHES`` order."""
        if self.poi_counts is None or self.mobility is None:
            raise ValueError("the all-branch fusion needs POI counts and mobility features")
        parts = [
            *(self.visual[m] for m in VISUAL),
            self.text,
            (self.poi_counts, np.ones(self.n, dtype=bool)),  # 0 POIs is a count too
            self.mobility,
        ]
        xs = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x, _ in parts]
        return xs, torch.from_numpy(np.column_stack([has for _, has in parts]))

    def subset(self, rows: np.ndarray) -> RegionInputs:
        def pick(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            return pair[0][rows], pair[1][rows]

        return RegionInputs(
            {m: pick(v) for m, v in self.visual.items()},
            pick(self.text),
            None if self.poi_counts is None else self.poi_counts[rows],
            None if self.mobility is None else pick(self.mobility),
        )


@dataclass
class RegionEmbeddings:
    """Per region (in input order): one vector per kind, what was imputed, the attention
    weights of the fused vector (columns ``branches``) and the mean POI text embedding."""

    vectors: dict[str, np.ndarray]
    imputed: dict[str, np.ndarray]
    alpha: np.ndarray  # (n, len(branches)), 0 where a branch is missing
    branches: tuple[str, ...]
    text_mean: np.ndarray

    def attention(self) -> list[dict[str, Any] | None]:
        return [
            {m: float(a) for m, a in zip(self.branches, row, strict=True)} for row in self.alpha
        ]

    def only(self, keep: np.ndarray) -> RegionEmbeddings:
        return RegionEmbeddings(
            {k: v[keep] for k, v in self.vectors.items()},
            {k: v[keep] for k, v in self.imputed.items()},
            self.alpha[keep],
            self.branches,
            self.text_mean[keep],
        )


def visual_means(
    data: CityData, net: MuseclNet, image_size: int, show_progress: bool | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per visual modality, the mean image embedding per region and which regions have one."""
    out = {}
    for kind in VISUAL:
        pix = data.pixels(kind, image_size, show_progress)
        if not len(pix):
            out[kind] = (np.zeros((data.n, net.dim), np.float32), np.zeros(data.n, bool))
            continue
        # decoded batch by batch when the images do not fit in the cache: show progress
        emb = encode_images(
            net.encoders[kind], pix, show_progress=False if pix.cached else show_progress
        )
        out[kind] = region_means(emb, data.images[kind].region, data.n)
    return out


def poi_text_means(
    session: Session,
    data: CityData,
    encoder: TextEncoder,
    batch_size: int = 64,
    show_progress: bool | None = None,
    pending: list[TextEmbedding] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean POI sentence embedding per region, and which regions have POIs."""
    sent = text_embeddings(
        session, encoder, data.poi_sentence, data.poi_hash, batch_size, show_progress, pending
    )
    if not len(sent):
        return np.zeros((data.n, encoder.dim), np.float32), np.zeros(data.n, bool)
    return region_means(sent, data.poi_region, data.n)


def count_inputs(
    data: CityData, net: MuseclNet
) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """The POI-count and mobility features of every region (None for format-2 models)."""
    if net.vocabulary is None:
        return None, None
    counts = poi_count_features(data.n, data.poi_region, data.poi_category, net.vocabulary)
    return counts, mobility_features(data.inflow, data.outflow, data.od)


def region_inputs(
    session: Session,
    data: CityData,
    net: MuseclNet,
    encoder: TextEncoder,
    config: dict[str, Any],
    show_progress: bool | None = None,
    pending: list[TextEmbedding] | None = None,
) -> RegionInputs:
    """Every branch's input for every region of ``data``: images encoded, texts from the
    cache (or encoded), counts and mobility features."""
    text = poi_text_means(
        session, data, encoder, int(config.get("text_batch_size", 64)), show_progress, pending
    )
    visual = visual_means(data, net, int(config["image_size"]), show_progress)
    counts, mobility = count_inputs(data, net)
    return RegionInputs(visual, text, counts, mobility)


@torch.no_grad()
def embed_regions(
    inputs: RegionInputs, net: MuseclNet, *, learn_imputation: bool = False
) -> RegionEmbeddings:
    """Modality embeddings, fused embedding and attention for every region.

    A region lacking a modality gets the model's imputation vector for it (the modality's
    mean over the training city, set once with ``learn_imputation`` when training), flagged
    as imputed: every region's vectors depend on that region alone, so re-embedding a few
    regions gives what embedding them all would. The fused vector uses only the branches a
    region has (attention weight 0 otherwise); a region with no image at all gets no fused
    vector (zeros, flagged as imputed; callers leave such regions unembedded).
    """
    net.eval()
    visual = inputs.visual
    mask = np.column_stack([visual[m][1] for m in VISUAL])
    ok = mask.any(axis=1)
    if net.fusion is not None:
        branches: tuple[str, ...] = BRANCHES
        xs, fmask = inputs.fusion_inputs()
        fused = np.zeros((inputs.n, net.dim), dtype=np.float32)
        alpha = np.zeros((inputs.n, len(BRANCHES)), dtype=np.float32)
        if ok.any():
            keep = torch.from_numpy(ok)
            f, a = net.fusion([x[keep] for x in xs], fmask[keep])
            fused[ok], alpha[ok] = f.numpy(), a.numpy()
    else:
        branches = VISUAL
        fused, alpha = fuse_visual(net, {m: visual[m][0] for m in VISUAL}, mask)
    text_mean, has_text = inputs.text
    vectors = {m: visual[m][0].copy() for m in VISUAL}
    vectors["poi"] = net.fusion_visual.text(torch.from_numpy(text_mean)).numpy()
    imputed = {m: ~visual[m][1] for m in VISUAL}
    imputed["poi"] = ~has_text
    if learn_imputation:
        net.set_imputation({k: v[~imputed[k]] for k, v in vectors.items()})
    for kind, vec in vectors.items():
        vec[imputed[kind]] = net.imputation(kind)
    vectors["fused"] = fused
    imputed["fused"] = np.logical_not(ok)
    return RegionEmbeddings(vectors, imputed, alpha, branches, text_mean)


@torch.no_grad()
def fuse_visual(
    net: MuseclNet, vectors: dict[str, np.ndarray], mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's visual-only fusion of remote and street vectors (zeros where a region
    has neither)."""
    ok = mask.any(axis=1)
    fused = np.zeros((len(mask), net.dim), dtype=np.float32)
    alpha = np.zeros(mask.shape, dtype=np.float32)
    if ok.any():
        emb = np.stack([vectors[m] for m in VISUAL], axis=1)[ok]
        f, a = net.fusion_visual(torch.from_numpy(emb), torch.from_numpy(mask[ok]))
        fused[ok], alpha[ok] = f.numpy(), a.numpy()
    return fused, alpha


def write_region_embeddings(
    session: Session,
    region_pks: Sequence[int],
    model_version_id: int,
    result: RegionEmbeddings,
    revision: int,
    kinds: dict[str, np.ndarray] | None = None,
) -> dict[str, int]:
    """Write (replacing what is there) the embeddings of the given regions, rows in
    ``result`` order; the one writer of train, embed and reembed.

    Args:
        kinds: per kind, a bool mask of the rows to write (default: every row of every kind).

    Returns:
        rows written per kind.
    """
    attention = result.attention()
    pks = np.asarray(region_pks, dtype=np.int64)
    counts = {}
    for kind, vec in result.vectors.items():
        rows = np.flatnonzero(kinds[kind]) if kinds is not None else np.arange(len(pks))
        if not len(rows):
            counts[kind] = 0
            continue
        pk_list = pks[rows].tolist()
        delete_in(
            session,
            Embedding,
            Embedding.region_pk,
            pk_list,
            Embedding.model_version_id == model_version_id,
            Embedding.kind == kind,
        )
        counts[kind] = put_embeddings(
            session,
            model_version_id,
            kind,
            pk_list,
            vec[rows],
            revision,
            attention=[attention[j] for j in rows] if kind == "fused" else None,
            imputed=result.imputed[kind][rows].tolist() if kind != "fused" else None,
        )
    return counts


def embed_city(
    session: Session, city: str, model_version_id: int, show_progress: bool | None = None
) -> dict[str, Any]:
    """Embed every region of ``city`` with a trained model version (frozen), replacing that
    version's embeddings of the city under a new revision. This is how a model trained on one
    city embeds another, so that both live in one space (cross-city search and transfer).

    Regions without any image get no embeddings (they are counted in the result).
    """
    mv = session.get(ModelVersion, model_version_id)
    if mv is None:
        raise InputError(f"model version {model_version_id} does not exist")
    net, config = MuseclNet.load(mv.checkpoint_path)
    data = load_city_data(session, city, mobility=net.fusion is not None)
    encoder = TextEncoder(config.get("text_model", "all-MiniLM-L6-v2"))
    pending: list[TextEmbedding] = []
    result = embed_regions(
        region_inputs(session, data, net, encoder, config, show_progress, pending), net
    )
    faults.point("embed:encoded")
    keep = ~result.imputed["fused"]
    session.add_all(pending)
    rev = Revision(
        operation="embed", city_id=data.city.id, summary={"model_version": model_version_id}
    )
    session.add(rev)
    session.flush()
    delete_in(  # regions that lost their images too
        session,
        Embedding,
        Embedding.region_pk,
        data.region_pks,
        Embedding.model_version_id == model_version_id,
    )
    counts = write_region_embeddings(
        session,
        [pk for pk, k in zip(data.region_pks, keep, strict=True) if k],
        model_version_id,
        result.only(keep),
        rev.id,
    )
    rev.summary = {
        "model_version": model_version_id,
        "embeddings": counts,
        "without_images": int((~keep).sum()),
    }
    session.flush()
    return {
        "city": city,
        "model_version": model_version_id,
        "revision": rev.id,
        "embeddings": counts,
        "without_images": int((~keep).sum()),
    }


def visual_fusion_vectors(
    session: Session, model_version_id: int, city_id: int
) -> tuple[list[str], np.ndarray]:
    """The paper's visual-only fusion (``fused_visual``) of a model version's stored remote
    and street vectors, for the ablation row of the evaluation table (not stored).

    Returns:
        (region ids, matrix), in the order of ``load_embeddings``; empty when the model
        version has no stored vectors for the city.
    """
    mv = session.get(ModelVersion, model_version_id)
    if mv is None:
        raise InputError(f"model version {model_version_id} does not exist")
    net, _ = MuseclNet.load(mv.checkpoint_path)
    ids: list[str] = []
    vecs: dict[str, np.ndarray] = {}
    masks = []
    for kind in VISUAL:
        ids_k, mat, imputed = load_embeddings_flags(session, model_version_id, kind, city_id)
        if ids and ids_k != ids:
            raise ValueError(f"model version {model_version_id} has ragged {kind} embeddings")
        ids, vecs[kind] = ids_k, mat
        masks.append(~imputed)
    if not ids:
        return [], np.zeros((0, 0), dtype=np.float32)
    fused, _ = fuse_visual(net, vecs, np.column_stack(masks))
    return ids, fused
