"""What a region's encoders read, from the store: its images, POI texts and mobility
(:class:`CityData`), and the per-branch inputs of the networks (:class:`RegionInputs`): mean
image and POI text embeddings per region, POI counts and mobility features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy import sparse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store.embedding.images import ImageSet, Pixels, encode_images
from musecl_store.hashing import digest
from musecl_store.nn.counts import mobility_features, poi_count_features
from musecl_store.nn.fusion import VISUAL
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.text import TextEncoder, poi_sentence
from musecl_store.progress import progress
from musecl_store.store.chunks import rows_in
from musecl_store.store.cities import get_city
from musecl_store.store.tables import City, Image, Mobility, OdFlow, Poi, Region, TextEmbedding

__all__ = [
    "CityData",
    "RegionInputs",
    "count_inputs",
    "load_city_data",
    "poi_text_means",
    "region_inputs",
    "region_means",
    "rows_of",
    "text_embeddings",
    "visual_means",
]


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
