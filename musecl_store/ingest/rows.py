"""The rows of a bundle's modalities in the store (POIs, images, mobility, indicators): for
each region whose hash of a modality changed, its old rows deleted and the bundle's inserted,
a chunk at a time."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session

from musecl_store.bundle.reader import Bundle
from musecl_store.ingest.hashes import bit, indexes
from musecl_store.store import chunks
from musecl_store.store.chunks import delete_in
from musecl_store.store.tables import IMAGE_KINDS, Base, Image, Indicator, Mobility, OdFlow, Poi

INDICATOR_SOURCE = "indicators.csv"


def insert_rows(session: Session, model: type[Base], rows: Iterable[dict[str, Any]]) -> None:
    """Insert rows made on the fly, a chunk at a time."""
    it = iter(rows)
    while chunk := list(islice(it, chunks.IN_CHUNK)):
        session.execute(insert(model), chunk)


def write_modalities(
    session: Session,
    bundle: Bundle,
    city_id: int,
    pks: np.ndarray,
    existed: np.ndarray,
    modified: np.ndarray,
) -> None:
    """Replace the rows of every (region, modality) whose hash changed (a region that was
    not in the store has no rows to delete)."""

    def wanted(mod: str) -> tuple[np.ndarray, list[int]]:
        """Whether each region's ``mod`` rows are rewritten; the store rows to clear."""
        mask = (modified & bit(mod)) != 0
        return mask, pks[mask & existed].tolist()

    _write_pois(session, bundle, city_id, pks, *wanted("poi"))
    for kind in IMAGE_KINDS:
        _write_images(session, bundle, city_id, pks, kind, *wanted(kind))
    _write_mobility(session, bundle, pks, *wanted("mobility"))
    _write_indicators(session, bundle, pks, *wanted("indicators"))


def _point(lon: float, lat: float) -> str:
    return f"SRID=4326;POINT({lon!r} {lat!r})"


def _write_pois(
    session: Session,
    bundle: Bundle,
    city_id: int,
    pks: np.ndarray,
    want: np.ndarray,
    old: list[int],
) -> None:
    delete_in(session, Poi, Poi.region_pk, old)
    insert_rows(
        session,
        Poi,
        (
            {
                "city_id": city_id,
                "region_pk": int(pks[p.region]),
                "poi_id": p.poi_id,
                "name": p.name,
                "category": p.category,
                "text": p.text,
                "geom": _point(p.lon, p.lat),
                "content_hash": h.hex(),
            }
            for p, h in bundle.pois.with_hashes()
            if want[p.region]
        ),
    )


def _write_images(
    session: Session,
    bundle: Bundle,
    city_id: int,
    pks: np.ndarray,
    kind: str,
    want: np.ndarray,
    old: list[int],
) -> None:
    delete_in(session, Image, Image.region_pk, old, Image.kind == kind)
    insert_rows(
        session,
        Image,
        (
            {
                "city_id": city_id,
                "region_pk": int(pks[im.region]),
                "kind": kind,
                "path": im.path,
                "geom": _point(im.lon, im.lat),
                "heading": im.heading,
                "sha256": im.sha256,
                "size_bytes": im.size_bytes,
                "width": im.width,
                "height": im.height,
                "content_hash": im.content_hash,
            }
            for im in bundle.images
            if im.kind == kind and want[im.region]
        ),
    )


def _write_mobility(
    session: Session, bundle: Bundle, pks: np.ndarray, want: np.ndarray, old: list[int]
) -> None:
    """In/out counts of the wanted regions, and every O/D flow from or to one of them."""
    mob = bundle.mobility
    delete_in(session, Mobility, Mobility.region_pk, old)
    delete_in(session, OdFlow, OdFlow.origin_pk, old)
    delete_in(session, OdFlow, OdFlow.dest_pk, old)
    insert_rows(
        session,
        Mobility,
        (
            {"region_pk": int(pks[i]), "inflow": int(mob.inflow[i]), "outflow": int(mob.outflow[i])}
            for i in indexes(want & ((mob.inflow > 0) | (mob.outflow > 0)))
        ),
    )
    origin, dest, trips = mob.od_pairs()
    insert_rows(
        session,
        OdFlow,
        (
            {"origin_pk": int(pks[origin[j]]), "dest_pk": int(pks[dest[j]]), "trips": int(trips[j])}
            for j in indexes(want[origin] | want[dest])
        ),
    )


def _write_indicators(
    session: Session, bundle: Bundle, pks: np.ndarray, want: np.ndarray, old: list[int]
) -> None:
    delete_in(
        session,
        Indicator,
        Indicator.region_pk,
        old,
        Indicator.source == INDICATOR_SOURCE,
    )
    indicators = bundle.indicators
    insert_rows(
        session,
        Indicator,
        (
            {"region_pk": int(pks[i]), "name": k, "value": v, "source": INDICATOR_SOURCE}
            for i in indexes(want)
            for k, v in indicators.get(i, {}).items()
        ),
    )
