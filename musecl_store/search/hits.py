"""The hits of a search: the rows a hit shows (region id, city, centroid, geometry,
attention) read in bulk, and the percentile of each hit's score among the candidates."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store.store.chunks import chunked
from musecl_store.store.tables import City, Embedding, Region


@dataclass
class Hit:
    rank: int
    region_id: str
    city: str
    score: float
    centroid: tuple[float, float]
    geometry: dict[str, Any] | None = None
    attention: dict[str, float] | None = None
    percentile: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rank": self.rank,
            "region_id": self.region_id,
            "city": self.city,
            "score": round(self.score, 6),
            "percentile": self.percentile,
            "centroid": [round(c, 7) for c in self.centroid],
        }
        if self.geometry is not None:
            out["geometry"] = self.geometry
        if self.attention is not None:
            out["attention"] = self.attention
        return out


def percentiles(
    hits: list[Hit],
    ranked: list[tuple[int, float]],
    reference: np.ndarray,
    members: set[int] | None,
) -> None:
    """Each hit's share (%) of the other reference regions that are less similar to the
    query; left None when fewer than 10 reference regions would make it meaningless."""
    # the hit itself does not count (members None: every hit is a reference region)
    inside = [members is None or pk in members for pk, _ in ranked]
    values = percentile_values([h.score for h in hits], inside, reference)
    for h, p in zip(hits, values, strict=True):
        h.percentile = p


def percentile_values(
    scores: Sequence[float], inside: Sequence[bool], reference: np.ndarray
) -> list[float | None]:
    """The percentile of each score among the ``reference`` scores (unsorted); ``inside``:
    the scored region is itself a reference region, which does not count."""
    thresholds = np.asarray(scores, dtype=np.float64) - 1e-6
    reference = np.asarray(reference, dtype=np.float64)
    if len(thresholds) <= 16:  # a few hits: count, no sort of the whole reference
        below = np.count_nonzero(reference[:, None] < thresholds[None, :], axis=0)
    else:
        below = np.searchsorted(np.sort(reference), thresholds, side="left")
    out: list[float | None] = []
    for b, self_counted in zip(below.tolist(), inside, strict=True):
        others = len(reference) - (1 if self_counted else 0)
        out.append(None if others < 10 else round(min(100.0, 100.0 * b / others), 1))
    return out


def hits_of(
    session: Session,
    ranked: list[tuple[int, float]],
    mv: int,
    with_geometry: bool,
    with_attention: bool,
) -> list[Hit]:
    if not ranked:
        return []
    rows = hit_rows(session, [p for p, _ in ranked], mv, with_geometry, with_attention)
    return make_hits(ranked, rows)


def hit_rows(
    session: Session, pks: Sequence[int], mv: int, with_geometry: bool, with_attention: bool
) -> dict[int, tuple[str, str, tuple[float, float], dict[str, Any] | None, Any]]:
    """pk -> (region id, city, centroid, GeoJSON geometry or None, attention or None) of the
    given regions, read in chunks."""
    cols: list[Any] = [
        Region.id,
        Region.region_id,
        City.name,
        func.ST_X(Region.centroid),
        func.ST_Y(Region.centroid),
    ]
    if with_geometry:
        cols.append(func.ST_AsGeoJSON(Region.geom))
    out: dict[int, tuple[str, str, tuple[float, float], dict[str, Any] | None, Any]] = {}
    for chunk in chunked(sorted(set(pks))):
        attention: dict[int, Any] = {}
        if with_attention:
            attention = dict(
                session.execute(
                    select(Embedding.region_pk, Embedding.attention).where(
                        Embedding.model_version_id == mv,
                        Embedding.kind == "fused",
                        Embedding.region_pk.in_(chunk),
                    )
                ).all()
            )
        for r in session.execute(
            select(*cols).join(City, City.id == Region.city_id).where(Region.id.in_(chunk))
        ).all():
            out[r[0]] = (
                r[1],
                r[2],
                (float(r[3]), float(r[4])),
                json.loads(r[5]) if with_geometry else None,
                attention.get(r[0]) if with_attention else None,
            )
    return out


def make_hits(
    ranked: list[tuple[int, float]],
    rows: dict[int, tuple[str, str, tuple[float, float], dict[str, Any] | None, Any]],
) -> list[Hit]:
    out = []
    for rank, (pk, score) in enumerate(ranked, start=1):
        region_id, city, centroid, geometry, attention = rows[pk]
        out.append(Hit(rank, region_id, city, float(score), centroid, geometry, attention))
    return out
