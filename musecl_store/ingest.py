"""Ingesting a city bundle into the store: diff by content hash, write what changed, log it.

The caller owns the transaction: :func:`ingest_bundle` only flushes. Everything is read and
validated before the first write, so a fatal defect writes nothing, and a failure during the
writes rolls back with the caller's transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from musecl_store import faults, geo
from musecl_store.bundle import Bundle, digest, read_bundle
from musecl_store.report import Report
from musecl_store.tables import (
    Base,
    CensusFeature,
    CensusLayer,
    City,
    Image,
    Indicator,
    Mobility,
    OdFlow,
    Poi,
    Region,
    RegionChange,
    Revision,
    utcnow,
)

INDICATOR_SOURCE = "indicators.csv"
_IN_CHUNK = 5000  # ids per IN (...) list; SQLite allows 32766 bound parameters

T = TypeVar("T")


def _chunks(items: Sequence[T], n: int = _IN_CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _hash_set(parts: Iterable[str]) -> str:
    """Order-independent hash of a region's rows for one modality."""
    return digest(*sorted(parts))


_EMPTY = _hash_set([])


@dataclass
class IngestSummary:
    """What an ingest did. ``revision`` is ``None`` when nothing changed."""

    city: str
    revision: int | None
    city_created: bool
    regions: dict[str, int]
    changes: list[dict[str, Any]]
    counts: dict[str, Any]
    census: dict[str, list[str]]
    report: Report = field(default_factory=Report)

    @property
    def changed(self) -> bool:
        return self.revision is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "city": self.city,
            "revision": self.revision,
            "changed": self.changed,
            "city_created": self.city_created,
            "regions": self.regions,
            "changes": self.changes,
            "counts": self.counts,
            "census_layers": self.census,
            "problems": self.report.to_dict(),
        }


def region_hashes(bundle: Bundle) -> list[dict[str, str]]:
    """Content hash per region and modality (the columns ``Region.hash_*``)."""
    n = len(bundle.regions)
    pois: list[list[str]] = [[] for _ in range(n)]
    for p in bundle.pois:
        pois[p.region].append(p.content_hash)
    images: dict[str, list[list[str]]] = {
        "remote": [[] for _ in range(n)],
        "street": [[] for _ in range(n)],
    }
    for im in bundle.images:
        images[im.kind][im.region].append(im.content_hash)
    mob = bundle.mobility
    od: list[list[str]] = [[] for _ in range(n)]
    ids = [r.region_id for r in bundle.regions]
    for (o, d), c in mob.od.items():
        entry = f"{ids[o]}>{ids[d]}:{c}"
        od[o].append(entry)
        if d != o:
            od[d].append(entry)
    out = []
    for i, r in enumerate(bundle.regions):
        ind = bundle.indicators.get(i, {})
        out.append(
            {
                "geometry": digest(r.geom.wkb, r.h3_cell),
                "poi": _hash_set(pois[i]),
                "remote": _hash_set(images["remote"][i]),
                "street": _hash_set(images["street"][i]),
                "mobility": _hash_set(
                    [f"in={int(mob.inflow[i])}", f"out={int(mob.outflow[i])}", *od[i]]
                ),
                "indicators": _hash_set(f"{k}={v!r}" for k, v in ind.items()),
            }
        )
    return out


def ingest_bundle(
    session: Session, path: str | Path, *, show_progress: bool | None = None
) -> IngestSummary:
    """Read, validate and ingest the bundle at ``path``; the caller commits.

    Raises:
        BundleError: a fatal defect in the bundle; nothing was written.
    """
    return write_bundle(session, read_bundle(path, show_progress=show_progress))


def write_bundle(session: Session, bundle: Bundle) -> IngestSummary:
    """Write a read bundle into the store, touching only what changed."""
    spec = bundle.city
    city = session.scalar(select(City).where(City.name == spec.name))
    hashes = region_hashes(bundle)
    new_ids = {r.region_id: i for i, r in enumerate(bundle.regions)}

    old: dict[str, tuple[int, dict[str, str]]] = {}
    if city is not None:
        for row in session.execute(
            select(
                Region.id,
                Region.region_id,
                Region.hash_geometry,
                Region.hash_poi,
                Region.hash_remote,
                Region.hash_street,
                Region.hash_mobility,
                Region.hash_indicators,
            ).where(Region.city_id == city.id)
        ):
            old[row.region_id] = (
                row.id,
                {
                    "geometry": row.hash_geometry,
                    "poi": row.hash_poi,
                    "remote": row.hash_remote,
                    "street": row.hash_street,
                    "mobility": row.hash_mobility,
                    "indicators": row.hash_indicators,
                },
            )

    changes: list[dict[str, Any]] = []
    changed_mods: dict[int, list[str]] = {}  # bundle region index -> changed modalities
    for i, r in enumerate(bundle.regions):
        if r.region_id not in old:
            mods = [m for m, h in hashes[i].items() if h != _EMPTY or m == "geometry"]
            changes.append({"region_id": r.region_id, "change": "added", "modalities": mods})
            changed_mods[i] = list(hashes[i])
            continue
        mods = [m for m, h in hashes[i].items() if old[r.region_id][1][m] != h]
        if mods:
            changes.append({"region_id": r.region_id, "change": "updated", "modalities": mods})
            changed_mods[i] = mods
    removed = sorted(set(old) - set(new_ids))
    changes.extend({"region_id": rid, "change": "removed", "modalities": []} for rid in removed)

    census_old: dict[str, tuple[int, str]] = {}
    if city is not None:
        census_old = {
            n: (i, h)
            for i, n, h in session.execute(
                select(CensusLayer.id, CensusLayer.name, CensusLayer.content_hash).where(
                    CensusLayer.city_id == city.id
                )
            )
        }
    census_new = {layer.name: layer for layer in bundle.census}
    census = {
        "added": sorted(set(census_new) - set(census_old)),
        "updated": sorted(
            n
            for n in census_new
            if n in census_old and census_old[n][1] != census_new[n].content_hash
        ),
        "removed": sorted(set(census_old) - set(census_new)),
    }

    city_fields = {
        "crs": spec.crs,
        "h3_resolution": spec.h3_resolution,
        "meta": spec.meta,
        "source_path": str(bundle.root),
    }
    city_changed = city is None or any(getattr(city, k) != v for k, v in city_fields.items())
    n_added = sum(1 for c in changes if c["change"] == "added")
    summary = IngestSummary(
        city=spec.name,
        revision=None,
        city_created=city is None,
        regions={
            "added": n_added,
            "updated": sum(1 for c in changes if c["change"] == "updated"),
            "removed": len(removed),
            "unchanged": len(bundle.regions) - len(changed_mods),
            "total": len(bundle.regions),
        },
        changes=changes,
        counts=_bundle_counts(bundle),
        census=census,
        report=bundle.report,
    )
    if not (changes or city_changed or any(census.values())):
        return summary

    # ---- write
    rev = Revision(operation="ingest", city_id=city.id if city else None)
    session.add(rev)
    if city is None:
        city = City(name=spec.name, revision=0, **city_fields)
        session.add(city)
        session.flush()
        rev.city_id = city.id
    session.flush()
    for k, v in city_fields.items():
        setattr(city, k, v)
    city.revision = rev.id
    city.updated_at = utcnow()

    _delete_in(session, Region, Region.id, [old[rid][0] for rid in removed])

    touched = sorted(changed_mods)
    new_rows: list[dict[str, Any]] = []
    upd_rows: list[tuple[int, dict[str, Any]]] = []
    for i in touched:
        r = bundle.regions[i]
        values: dict[str, Any] = {f"hash_{m}": h for m, h in hashes[i].items()}
        values["revision"] = rev.id
        if "geometry" in changed_mods[i]:
            values.update(
                geom=geo.to_ewkt(r.geom),
                centroid=geo.to_ewkt(r.geom.centroid),
                h3_cell=r.h3_cell,
                area_km2=geo.area_km2(r.geom),
            )
        if r.region_id in old:
            upd_rows.append((old[r.region_id][0], values))
        else:
            new_rows.append({"city_id": city.id, "region_id": r.region_id, **values})
    _insert_rows(session, Region, new_rows)
    for pk, values in upd_rows:
        session.execute(update(Region).where(Region.id == pk).values(**values))
    session.flush()
    faults.point("ingest:regions")

    pk_of = dict(
        session.execute(select(Region.region_id, Region.id).where(Region.city_id == city.id)).all()
    )
    pks = [pk_of[r.region_id] for r in bundle.regions]
    _write_modalities(session, bundle, city.id, pks, changed_mods)
    session.flush()
    faults.point("ingest:modalities")
    _write_census(session, bundle, city.id, census, census_old)
    session.flush()
    faults.point("ingest:census")

    if changes:
        session.execute(
            insert(RegionChange),
            [{"revision_id": rev.id, "city_id": city.id, **c} for c in changes],
        )
    rev.summary = {
        "bundle": str(bundle.root),
        "regions": summary.regions,
        "census_layers": census,
        "skipped": bundle.report.total("skipped"),
        "fixed": bundle.report.total("fixed"),
    }
    session.flush()
    summary.revision = rev.id
    return summary


def _insert_rows(session: Session, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    for chunk in _chunks(rows):
        session.execute(insert(model), list(chunk))


def _delete_in(
    session: Session, model: type[Base], column: Any, ids: Sequence[int], *where: Any
) -> None:
    for chunk in _chunks(ids):
        session.execute(delete(model).where(column.in_(chunk), *where))


def _write_modalities(
    session: Session,
    bundle: Bundle,
    city_id: int,
    pks: list[int],
    changed: dict[int, list[str]],
) -> None:
    """Replace the rows of every (region, modality) whose hash changed."""

    def regions_with(mod: str) -> list[int]:
        return [i for i, mods in changed.items() if mod in mods]

    poi_regions = regions_with("poi")
    _delete_in(session, Poi, Poi.region_pk, [pks[i] for i in poi_regions])
    wanted = set(poi_regions)
    _insert_rows(
        session,
        Poi,
        [
            {
                "city_id": city_id,
                "region_pk": pks[p.region],
                "poi_id": p.poi_id,
                "name": p.name,
                "category": p.category,
                "text": p.text,
                "geom": f"SRID=4326;POINT({p.lon!r} {p.lat!r})",
                "content_hash": p.content_hash,
            }
            for p in bundle.pois
            if p.region in wanted
        ],
    )

    for kind in ("remote", "street"):
        img_regions = regions_with(kind)
        _delete_in(
            session, Image, Image.region_pk, [pks[i] for i in img_regions], Image.kind == kind
        )
        wanted = set(img_regions)
        _insert_rows(
            session,
            Image,
            [
                {
                    "city_id": city_id,
                    "region_pk": pks[im.region],
                    "kind": kind,
                    "path": im.path,
                    "geom": f"SRID=4326;POINT({im.lon!r} {im.lat!r})",
                    "heading": im.heading,
                    "sha256": im.sha256,
                    "size_bytes": im.size_bytes,
                    "width": im.width,
                    "height": im.height,
                    "content_hash": im.content_hash,
                }
                for im in bundle.images
                if im.kind == kind and im.region in wanted
            ],
        )

    mob_regions = regions_with("mobility")
    mob = bundle.mobility
    mob_pks = [pks[i] for i in mob_regions]
    _delete_in(session, Mobility, Mobility.region_pk, mob_pks)
    _delete_in(session, OdFlow, OdFlow.origin_pk, mob_pks)
    _delete_in(session, OdFlow, OdFlow.dest_pk, mob_pks)
    _insert_rows(
        session,
        Mobility,
        [
            {"region_pk": pks[i], "inflow": int(mob.inflow[i]), "outflow": int(mob.outflow[i])}
            for i in mob_regions
            if mob.inflow[i] or mob.outflow[i]
        ],
    )
    wanted = set(mob_regions)
    _insert_rows(
        session,
        OdFlow,
        [
            {"origin_pk": pks[o], "dest_pk": pks[d], "trips": c}
            for (o, d), c in sorted(mob.od.items())
            if o in wanted or d in wanted
        ],
    )

    ind_regions = regions_with("indicators")
    _delete_in(
        session,
        Indicator,
        Indicator.region_pk,
        [pks[i] for i in ind_regions],
        Indicator.source == INDICATOR_SOURCE,
    )
    _insert_rows(
        session,
        Indicator,
        [
            {"region_pk": pks[i], "name": k, "value": v, "source": INDICATOR_SOURCE}
            for i in ind_regions
            for k, v in bundle.indicators.get(i, {}).items()
        ],
    )


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
        _insert_rows(
            session,
            CensusFeature,
            [
                {"layer_id": row.id, "feature_no": no, "geom": geo.to_ewkt(g), "properties": props}
                for no, g, props in layer.features
            ],
        )


def _bundle_counts(bundle: Bundle) -> dict[str, Any]:
    by_kind: dict[str, int] = defaultdict(int)
    for im in bundle.images:
        by_kind[im.kind] += 1
    indicator_values: dict[str, int] = defaultdict(int)
    for values in bundle.indicators.values():
        for k in values:
            indicator_values[k] += 1
    mob = bundle.mobility
    return {
        "regions": len(bundle.regions),
        "pois": len(bundle.pois),
        "images": {"remote": by_kind["remote"], "street": by_kind["street"]},
        "trips": {
            "rows": mob.rows,
            "od": int(sum(mob.od.values())),
            "out": int(mob.outflow.sum()),
            "in": int(mob.inflow.sum()),
        },
        "indicators": dict(sorted(indicator_values.items())),
        "census_layers": {layer.name: len(layer.features) for layer in bundle.census},
    }
