"""Embedding a city's regions with a trained MuseCL network (no trainer import needed).

Loads what the network needs from the store (images, POI texts, mobility), runs the image
and text encoders and the fusion module, and writes the four kinds of embeddings. Used by
training for its write-back and by re-embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy import sparse
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from musecl_store.bundle import digest
from musecl_store.embeddings import put_embeddings
from musecl_store.images import open_checked
from musecl_store.nn.fusion import VISUAL
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.text import TextEncoder, poi_sentence
from musecl_store.progress import progress
from musecl_store.summary import get_city
from musecl_store.tables import City, Image, Mobility, OdFlow, Poi, Region, TextEmbedding


@dataclass
class ImageSet:
    """The images of one kind: the region index, path and sha256 of each."""

    region: np.ndarray
    paths: list[str]
    sha256: list[str]


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
    _pixels: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)

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

    def pixels(self, kind: str, size: int, show_progress: bool | None = None) -> torch.Tensor:
        """All images of a kind as uint8 (n, 3, size, size), each checked against its sha256."""
        key = (kind, size)
        if key not in self._pixels:
            imgs = self.images[kind]
            out = torch.empty((len(imgs.paths), 3, size, size), dtype=torch.uint8)
            items = list(zip(imgs.paths, imgs.sha256, strict=True))
            for k, (path, sha) in enumerate(
                progress(items, desc=f"load {kind} images", enabled=show_progress, unit="img")
            ):
                img = open_checked(self.city.source_path, path, sha)
                if img.size != (size, size):
                    img = img.resize((size, size))
                out[k] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
            self._pixels[key] = out
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
        select(Region.id, Region.region_id)
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
        rows = _rows_of(session, stmt.order_by(Image.path), Image.region_pk, only)
        images[kind] = ImageSet(
            np.array([index[r.region_pk] for r in rows], dtype=np.int64),
            [r.path for r in rows],
            [r.sha256 for r in rows],
        )
    pois = _rows_of(
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
        inflow, outflow, od = _mobility(session, city.id, index, n)
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
    )


def _rows_of(session: Session, stmt: Any, pk_column: Any, only: Sequence[int] | None) -> list[Any]:
    """Run ``stmt``, restricted to ``only`` region pks (in chunks) when given, keeping order."""
    if only is None:
        return list(session.execute(stmt).all())
    out: list[Any] = []
    pks = sorted(set(only))
    for i in range(0, len(pks), 5000):
        out.extend(session.execute(stmt.where(pk_column.in_(pks[i : i + 5000]))).all())
    return out


def _mobility(
    session: Session, city_id: int, index: dict[int, int], n: int
) -> tuple[np.ndarray, np.ndarray, sparse.csr_matrix]:
    inflow, outflow = np.zeros(n), np.zeros(n)
    for pk, i_, o_ in session.execute(
        select(Mobility.region_pk, Mobility.inflow, Mobility.outflow)
        .join(Region, Region.id == Mobility.region_pk)
        .where(Region.city_id == city_id)
    ).all():
        inflow[index[pk]], outflow[index[pk]] = i_, o_
    od_rows = session.execute(
        select(OdFlow.origin_pk, OdFlow.dest_pk, OdFlow.trips)
        .join(Region, Region.id == OdFlow.origin_pk)
        .where(Region.city_id == city_id)
    ).all()
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
    for i in range(0, len(unique), 5000):
        chunk = unique[i : i + 5000]
        for key, vec in session.execute(
            select(TextEmbedding.content_hash, TextEmbedding.vector).where(
                TextEmbedding.encoder == encoder.name, TextEmbedding.content_hash.in_(chunk)
            )
        ).all():
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
    encoder: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 256
) -> np.ndarray:
    """Run an image encoder (eval mode) over uint8 images in batches."""
    encoder.eval()
    outs = [
        encoder(pixels[i : i + batch_size].float() / 255.0)
        for i in range(0, len(pixels), batch_size)
    ]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


@dataclass
class RegionEmbeddings:
    """Per region (in ``CityData`` order): one vector per kind, what was imputed, attention."""

    vectors: dict[str, np.ndarray]
    imputed: dict[str, np.ndarray]
    alpha: np.ndarray  # (n, len(VISUAL)), 0 where a modality is missing
    text_mean: np.ndarray  # (n, text_dim) mean POI sentence embedding (zeros: no POIs)


def visual_means(
    data: CityData, net: MuseclNet, image_size: int, show_progress: bool | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per visual modality, the mean image embedding per region and which regions have one."""
    out = {}
    for kind in VISUAL:
        pix = data.pixels(kind, image_size, show_progress)
        emb = (
            encode_images(net.encoders[kind], pix)
            if len(pix)
            else np.zeros((0, net.dim), np.float32)
        )
        out[kind] = (
            region_means(emb, data.images[kind].region, data.n)
            if len(pix)
            else (np.zeros((data.n, net.dim), np.float32), np.zeros(data.n, bool))
        )
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


@torch.no_grad()
def embed_regions(
    visual: dict[str, tuple[np.ndarray, np.ndarray]],
    text: tuple[np.ndarray, np.ndarray],
    net: MuseclNet,
    *,
    learn_imputation: bool = False,
) -> RegionEmbeddings:
    """Modality embeddings, fused embedding and attention for every region.

    A region lacking a modality gets the model's imputation vector for it (the modality's
    mean over the training city, set once with ``learn_imputation`` when training), flagged
    as imputed: every region's vectors depend on that region alone, so re-embedding a few
    regions gives what embedding them all would. The fused vector uses only the visual
    modalities a region has (attention weight 0 otherwise); a region with no image at all
    gets no fused vector (zeros, flagged as imputed).
    """
    net.eval()
    mask = np.column_stack([visual[m][1] for m in VISUAL])
    emb = np.stack([visual[m][0] for m in VISUAL], axis=1)
    ok = mask.any(axis=1)  # regions without any image cannot be fused (callers drop them)
    fused = np.zeros((len(mask), net.dim), dtype=np.float32)
    alpha = np.zeros(mask.shape, dtype=np.float32)
    if ok.any():
        f, a = net.fusion(torch.from_numpy(emb[ok]), torch.from_numpy(mask[ok]))
        fused[ok], alpha[ok] = f.numpy(), a.numpy()
    text_mean, has_text = text
    poi = net.fusion.text(torch.from_numpy(text_mean)).numpy()
    vectors = {m: visual[m][0].copy() for m in VISUAL}
    vectors["poi"] = poi
    imputed = {m: ~visual[m][1] for m in VISUAL}
    imputed["poi"] = ~has_text
    if learn_imputation:
        net.set_imputation({k: v[~imputed[k]] for k, v in vectors.items()})
    for kind, vec in vectors.items():
        vec[imputed[kind]] = net.imputation(kind)
    vectors["fused"] = fused
    imputed["fused"] = np.logical_not(ok)
    return RegionEmbeddings(vectors, imputed, alpha, text_mean)


def write_region_embeddings(
    session: Session, data: CityData, model_version_id: int, result: RegionEmbeddings, revision: int
) -> dict[str, int]:
    """Write the four kinds of embeddings of every region; returns rows per kind."""
    attention: list[dict[str, Any] | None] = [
        {m: float(a) for m, a in zip(VISUAL, row, strict=True)} for row in result.alpha
    ]
    counts = {}
    for kind, vec in result.vectors.items():
        counts[kind] = put_embeddings(
            session,
            model_version_id,
            kind,
            data.region_pks,
            vec,
            revision,
            attention=attention if kind == "fused" else None,
            imputed=result.imputed[kind].tolist(),
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
    from musecl_store.tables import Embedding, ModelVersion, Revision

    mv = session.get(ModelVersion, model_version_id)
    if mv is None:
        raise LookupError(f"model version {model_version_id} does not exist")
    net, config = MuseclNet.load(mv.checkpoint_path)
    data = load_city_data(session, city, mobility=False)
    encoder = TextEncoder(config.get("text_model", "all-MiniLM-L6-v2"))
    pending: list[TextEmbedding] = []
    text = poi_text_means(
        session, data, encoder, int(config.get("text_batch_size", 64)), show_progress, pending
    )
    visual = visual_means(data, net, int(config["image_size"]), show_progress)
    result = embed_regions(visual, text, net)
    keep = ~result.imputed["fused"]
    session.add_all(pending)
    rev = Revision(
        operation="embed", city_id=data.city.id, summary={"model_version": model_version_id}
    )
    session.add(rev)
    session.flush()
    for i in range(0, len(data.region_pks), 5000):
        session.execute(
            delete(Embedding).where(
                Embedding.model_version_id == model_version_id,
                Embedding.region_pk.in_(data.region_pks[i : i + 5000]),
            )
        )
    sub = data.only_regions(keep)
    kept = RegionEmbeddings(
        {k: v[keep] for k, v in result.vectors.items()},
        {k: v[keep] for k, v in result.imputed.items()},
        result.alpha[keep],
        result.text_mean[keep],
    )
    counts = write_region_embeddings(session, sub, model_version_id, kept, rev.id)
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
