"""Ingesting a city bundle into the store: plan (diff by content hash), write what changed,
log it.

The caller owns the transaction: these functions only flush. Everything is read and
validated before the first write, so a fatal defect writes nothing, and a failure during the
writes rolls back with the caller's transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from musecl_store import faults, geo
from musecl_store.bundle.reader import Bundle, read_bundle
from musecl_store.ingest.hashes import bit, indexes
from musecl_store.ingest.plan import IngestPlan, IngestSummary, plan_bundle
from musecl_store.ingest.rows import insert_rows, write_modalities
from musecl_store.store import chunks
from musecl_store.store.chunks import delete_in
from musecl_store.store.tables import (
    MODALITIES,
    CensusFeature,
    CensusLayer,
    City,
    Region,
    RegionChange,
    Revision,
    utcnow,
)

__all__ = ["apply_plan", "ingest_bundle", "write_bundle"]


def ingest_bundle(
    session: Session, path: str | Path, *, show_progress: bool | None = None
) -> IngestSummary:
    """Read, validate and ingest the bundle at ``path``; the caller commits.

    Raises:
        BundleError: a fatal defect in the bundle; nothing was written.
    """
    return write_bundle(session, read_bundle(path, show_progress=show_progress))


def write_bundle(session: Session, bundle: Bundle) -> IngestSummary:
    """Write a read bundle into the store, touching only what changed: its plan, applied."""
    return apply_plan(session, plan_bundle(session, bundle))


def apply_plan(session: Session, plan: IngestPlan) -> IngestSummary:
    """Carry out a plan made in this transaction: a new revision (none when nothing
    changed), the city, its regions, their rows per changed modality, the census layers and
    the change log.

    Rows are made and written a chunk at a time: what this holds per region is a few
    numbers, never a row.

    Returns:
        The plan's summary, with the revision written.
    """
    summary = plan.summary
    if not plan.changed:
        return summary
    bundle = plan.bundle
    rev, city = _write_city(session, plan)
    removed = plan.regions.removed
    delete_in(session, Region, Region.id, [removed[rid] for rid in sorted(removed)])
    _write_regions(session, plan, city.id, rev.id)
    session.flush()
    faults.point("ingest:regions")

    pks = _region_pks(session, bundle, city.id)
    write_modalities(session, bundle, city.id, pks, plan.regions.old_pk >= 0, plan.regions.modified)
    session.flush()
    faults.point("ingest:modalities")
    _write_census(session, bundle, city.id, summary.census, plan.census_old)
    session.flush()
    faults.point("ingest:census")

    insert_rows(
        session,
        RegionChange,
        ({"revision_id": rev.id, "city_id": city.id, **c} for c in summary.changes),
    )
    rev.summary = {
        "bundle": str(bundle.root),
        "regions": summary.regions,
        "census_layers": summary.census,
        "skipped": bundle.report.total("skipped"),
        "fixed": bundle.report.total("fixed"),
    }
    session.flush()
    summary.revision, summary.pending = rev.id, False
    return summary


def _write_city(session: Session, plan: IngestPlan) -> tuple[Revision, City]:
    """The new revision, and the city's row (made when new) set to the bundle's fields."""
    city = None if plan.city_id is None else session.get(City, plan.city_id)
    rev = Revision(operation="ingest", city_id=city.id if city else None)
    session.add(rev)
    if city is None:
        city = City(name=plan.bundle.city.name, revision=0, **plan.city_fields)
        session.add(city)
        session.flush()
        rev.city_id = city.id
    session.flush()
    for k, v in plan.city_fields.items():
        setattr(city, k, v)
    city.revision = rev.id
    city.updated_at = utcnow()
    return rev, city


def _write_regions(session: Session, plan: IngestPlan, city_id: int, revision: int) -> None:
    """Insert the new regions (in bundle order) and update the changed ones."""
    regions, diff = plan.bundle.regions, plan.regions
    hashes, old_pk, modified = diff.hashes, diff.old_pk, diff.modified

    def values(i: int) -> dict[str, Any]:
        r = regions[i]
        out: dict[str, Any] = {f"hash_{m}": hashes.hex(i, m) for m in MODALITIES}
        out["revision"] = revision
        if modified[i] & bit("geometry"):
            g = r.geom
            out.update(
                geom=geo.to_ewkt(g),
                centroid=geo.to_ewkt(g.centroid),
                h3_cell=r.h3_cell,
                area_km2=geo.area_km2(g),
            )
        return out

    new = indexes((modified != 0) & (old_pk < 0))
    insert_rows(
        session,
        Region,
        ({"city_id": city_id, "region_id": regions[i].region_id, **values(i)} for i in new),
    )
    for i in indexes((modified != 0) & (old_pk >= 0)):
        session.execute(update(Region).where(Region.id == int(old_pk[i])).values(**values(i)))


def _region_pks(session: Session, bundle: Bundle, city_id: int) -> np.ndarray:
    """Per bundle region, its row in the store (all written by now)."""
    new_ids = {r.region_id: i for i, r in enumerate(bundle.regions)}
    pks = np.full(len(bundle.regions), -1, np.int64)
    stmt = select(Region.region_id, Region.id).where(Region.city_id == city_id)
    for rid, pk in session.execute(stmt.execution_options(yield_per=chunks.IN_CHUNK)):
        pks[new_ids[rid]] = pk
    return pks


def _write_census(
    session: Session,
    bundle: Bundle,
    city_id: int,
    plan: dict[str, list[str]],
    old: dict[str, tuple[int, str]],
) -> None:
    for name in plan["updated"] + plan["removed"]:
        session.execute(delete(CensusLayer).where(CensusLayer.id == old[name][0]))
    layers = {layer.name: layer for layer in bundle.census}
    for name in plan["added"] + plan["updated"]:
        layer = layers[name]
        row = CensusLayer(
            city_id=city_id, name=name, fields=layer.fields, content_hash=layer.content_hash
        )
        session.add(row)
        session.flush()
        insert_rows(
            session,
            CensusFeature,
            [
                {"layer_id": row.id, "feature_no": no, "geom": geo.to_ewkt(g), "properties": props}
                for no, g, props in layer.features
            ],
        )
