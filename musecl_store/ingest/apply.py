"""Ingesting a city bundle into the store: diff by content hash, write what changed, log it.

The caller owns the transaction: :func:`ingest_bundle` only flushes. Everything is read and
validated before the first write, so a fatal defect writes nothing, and a failure during the
writes rolls back with the caller's transaction.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from musecl_store import faults, geo
from musecl_store.bundle.reader import Bundle, read_bundle
from musecl_store.bundle.report import Report
from musecl_store.hashing import digest, digest_bytes
from musecl_store.store.chunks import IN_CHUNK, delete_in
from musecl_store.store.tables import (
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


MODALITIES = ("geometry", "poi", "remote", "street", "mobility", "indicators")


class RegionHashes(Sequence[dict[str, str]]):
    """Content hash per region and modality (the columns ``Region.hash_*``): item ``i`` is
    region ``i``'s {modality: hex digest}. Held as 16 raw bytes a hash (~100 bytes a region
    in all, where a dict of hex strings takes ~900)."""

    def __init__(self, raw: dict[str, bytes]):
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw["geometry"]) // 16

    def hex(self, i: int, modality: str) -> str:
        return self.raw[modality][16 * i : 16 * i + 16].hex()

    def __getitem__(self, i: int) -> dict[str, str]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return {m: self.hex(i, m) for m in MODALITIES}


def _set_hash(parts: Iterable[str]) -> bytes:
    """:func:`_hash_set` as raw bytes."""
    return bytes.fromhex(_hash_set(parts))


def _grouped_hashes(n: int, region: np.ndarray, hashes: np.ndarray) -> bytes:
    """Per region, the hash of the set of its rows' content hashes (``hashes``: (m, 16) raw
    bytes, ``region``: each row's region), as :func:`_hash_set` of their hex would give."""
    out = bytearray(bytes.fromhex(_EMPTY) * n)
    if len(region) == 0:
        return bytes(out)
    hi = np.ascontiguousarray(hashes[:, :8]).view(">u8").ravel()
    lo = np.ascontiguousarray(hashes[:, 8:]).view(">u8").ravel()
    order = np.lexsort((lo, hi, region))  # by region, then by hash (= by hex)
    region, hashes = region[order], hashes[order]
    bounds = np.r_[np.flatnonzero(np.r_[True, region[1:] != region[:-1]]), len(region)]
    for start, end in _pairs(bounds):
        hexes = hashes[start:end].tobytes().hex()
        data = "".join(f"'{hexes[k : k + 32]}'\x1f" for k in range(0, len(hexes), 32))
        r = int(region[start])
        out[16 * r : 16 * r + 16] = hashlib.blake2b(data.encode(), digest_size=16).digest()
    return bytes(out)


def region_hashes(bundle: Bundle) -> RegionHashes:
    """Content hash per region and modality (the columns ``Region.hash_*``)."""
    n = len(bundle.regions)
    ids = [r.region_id for r in bundle.regions]
    geometry = bytearray()
    for r in bundle.regions:
        geometry += digest_bytes(r.wkb, r.h3_cell)
    raw: dict[str, bytes] = {
        "geometry": bytes(geometry),
        "poi": _grouped_hashes(n, bundle.pois.region, bundle.pois.hashes),
    }
    for kind in ("remote", "street"):
        images: dict[int, list[str]] = defaultdict(list)
        for im in bundle.images:
            if im.kind == kind:
                images[im.region].append(im.content_hash)
        out = bytearray(bytes.fromhex(_EMPTY) * n)
        for i, parts in images.items():
            out[16 * i : 16 * i + 16] = _set_hash(parts)
        raw[kind] = bytes(out)
    mob = bundle.mobility
    origin, dest, trips = mob.od_pairs()
    # an O/D entry counts for its origin and, when another region, for its destination
    other = np.flatnonzero(origin != dest)
    at = np.concatenate([origin, dest[other]])
    order = np.argsort(at, kind="stable")
    entries, at = np.concatenate([np.arange(len(origin)), other])[order], at[order]
    mobility, indicators = bytearray(), bytearray()
    table, names = bundle.indicators.table, bundle.indicators.names
    for a in range(0, n, _BLOCK):  # Python lists of a block of regions at a time
        b = min(a + _BLOCK, n)
        lo, hi = np.searchsorted(at, [a, b])
        block_at, block = at[lo:hi].tolist(), entries[lo:hi]
        o, d, c = origin[block].tolist(), dest[block].tolist(), trips[block].tolist()
        inflow, outflow = mob.inflow[a:b].tolist(), mob.outflow[a:b].tolist()
        k = 0
        for i in range(a, b):
            od: list[str] = []
            while k < len(block_at) and block_at[k] == i:
                od.append(f"{ids[o[k]]}>{ids[d[k]]}:{c[k]}")
                k += 1
            mobility += _set_hash([f"in={inflow[i - a]}", f"out={outflow[i - a]}", *od])
        for row in table[a:b].tolist():
            indicators += _set_hash(f"{k}={v!r}" for k, v in zip(names, row, strict=True) if v == v)
    raw["mobility"], raw["indicators"] = bytes(mobility), bytes(indicators)
    return RegionHashes(raw)


_BLOCK = 10_000


def _pairs(bounds: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) of each group, from the groups' boundaries, a block at a time."""
    for a in range(0, len(bounds) - 1, _BLOCK):
        part = bounds[a : a + _BLOCK + 1].tolist()
        yield from pairwise(part)


def _indexes(mask: np.ndarray) -> Iterator[int]:
    """The indexes where ``mask`` is true, as ints, made a block at a time."""
    for a in range(0, len(mask), _BLOCK):
        for i in np.flatnonzero(mask[a : a + _BLOCK]).tolist():
            yield a + i


def ingest_bundle(
    session: Session, path: str | Path, *, show_progress: bool | None = None
) -> IngestSummary:
    """Read, validate and ingest the bundle at ``path``; the caller commits.

    Raises:
        BundleError: a fatal defect in the bundle; nothing was written.
    """
    return write_bundle(session, read_bundle(path, show_progress=show_progress))


def write_bundle(session: Session, bundle: Bundle) -> IngestSummary:
    """Write a read bundle into the store, touching only what changed.

    Rows are made and written a chunk at a time: what this holds per region is a few
    numbers, never a row."""
    spec = bundle.city
    city = session.scalar(select(City).where(City.name == spec.name))
    hashes = region_hashes(bundle)
    n = len(bundle.regions)
    new_ids = {r.region_id: i for i, r in enumerate(bundle.regions)}

    old_pk = np.full(n, -1, np.int64)  # per bundle region: its row in the store, -1: none
    changed = np.full(n, _ALL, np.uint8)  # per bundle region: bit k = MODALITIES[k] changed
    removed: dict[str, int] = {}
    if city is not None:
        cols = [getattr(Region, f"hash_{m}") for m in MODALITIES]
        stmt = select(Region.id, Region.region_id, *cols).where(Region.city_id == city.id)
        for pk, rid, *old in session.execute(stmt.execution_options(yield_per=IN_CHUNK)):
            i = new_ids.get(rid)
            if i is None:
                removed[rid] = pk
                continue
            old_pk[i] = pk
            changed[i] = sum(1 << k for k, m in enumerate(MODALITIES) if old[k] != hashes.hex(i, m))

    changes: list[dict[str, Any]] = []
    # one (immutable) modality tuple per kind of change, not one list per region
    shared: dict[tuple[str, int], tuple[str, ...]] = {}
    for i in _indexes(changed != 0):
        if old_pk[i] < 0:
            bits = sum(
                1 << k
                for k, m in enumerate(MODALITIES)
                if m == "geometry" or hashes.hex(i, m) != _EMPTY
            )
            key = ("added", bits)
        else:
            key = ("updated", int(changed[i]))
        mods = shared.setdefault(key, tuple(m for k, m in enumerate(MODALITIES) if key[1] >> k & 1))
        changes.append(
            {"region_id": bundle.regions[i].region_id, "change": key[0], "modalities": mods}
        )
    changes.extend(
        {"region_id": rid, "change": "removed", "modalities": ()} for rid in sorted(removed)
    )
    n_added = int((old_pk < 0).sum())
    n_touched = int(np.count_nonzero(changed))

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
    summary = IngestSummary(
        city=spec.name,
        revision=None,
        city_created=city is None,
        regions={
            "added": n_added,
            "updated": n_touched - n_added,
            "removed": len(removed),
            "unchanged": n - n_touched,
            "total": n,
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

    delete_in(session, Region, Region.id, [removed[rid] for rid in sorted(removed)])
    _write_regions(session, bundle, hashes, city.id, rev.id, old_pk, changed)
    session.flush()
    faults.point("ingest:regions")

    pks = np.full(n, -1, np.int64)
    stmt = select(Region.region_id, Region.id).where(Region.city_id == city.id)
    for rid, pk in session.execute(stmt.execution_options(yield_per=IN_CHUNK)):
        pks[new_ids[rid]] = pk
    del new_ids
    _write_modalities(session, bundle, city.id, pks, old_pk >= 0, changed)
    session.flush()
    faults.point("ingest:modalities")
    _write_census(session, bundle, city.id, census, census_old)
    session.flush()
    faults.point("ingest:census")

    _insert_rows(
        session,
        RegionChange,
        ({"revision_id": rev.id, "city_id": city.id, **c} for c in changes),
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


def _bit(modality: str) -> int:
    return 1 << MODALITIES.index(modality)


_ALL = (1 << len(MODALITIES)) - 1


def _write_regions(
    session: Session,
    bundle: Bundle,
    hashes: RegionHashes,
    city_id: int,
    revision: int,
    old_pk: np.ndarray,
    changed: np.ndarray,
) -> None:
    """Insert the new regions (in bundle order) and update the changed ones."""

    def values(i: int) -> dict[str, Any]:
        r = bundle.regions[i]
        out: dict[str, Any] = {f"hash_{m}": hashes.hex(i, m) for m in MODALITIES}
        out["revision"] = revision
        if changed[i] & _bit("geometry"):
            g = r.geom
            out.update(
                geom=geo.to_ewkt(g),
                centroid=geo.to_ewkt(g.centroid),
                h3_cell=r.h3_cell,
                area_km2=geo.area_km2(g),
            )
        return out

    new = _indexes((changed != 0) & (old_pk < 0))
    _insert_rows(
        session,
        Region,
        ({"city_id": city_id, "region_id": bundle.regions[i].region_id, **values(i)} for i in new),
    )
    for i in _indexes((changed != 0) & (old_pk >= 0)):
        session.execute(update(Region).where(Region.id == int(old_pk[i])).values(**values(i)))


def _insert_rows(session: Session, model: type[Base], rows: Iterable[dict[str, Any]]) -> None:
    """Insert rows made on the fly, a chunk at a time."""
    it = iter(rows)
    while chunk := list(islice(it, IN_CHUNK)):
        session.execute(insert(model), chunk)


def _write_modalities(
    session: Session,
    bundle: Bundle,
    city_id: int,
    pks: np.ndarray,
    existed: np.ndarray,
    changed: np.ndarray,
) -> None:
    """Replace the rows of every (region, modality) whose hash changed (a region that was
    not in the store has no rows to delete)."""

    def wanted(mod: str) -> tuple[np.ndarray, list[int]]:
        """Whether each region's ``mod`` rows are rewritten; the store rows to clear."""
        mask = (changed & _bit(mod)) != 0
        return mask, pks[mask & existed].tolist()

    want, old = wanted("poi")
    delete_in(session, Poi, Poi.region_pk, old)
    _insert_rows(
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
                "geom": f"SRID=4326;POINT({p.lon!r} {p.lat!r})",
                "content_hash": h.hex(),
            }
            for p, h in bundle.pois.with_hashes()
            if want[p.region]
        ),
    )

    for kind in ("remote", "street"):
        want, old = wanted(kind)
        delete_in(session, Image, Image.region_pk, old, Image.kind == kind)
        _insert_rows(
            session,
            Image,
            (
                {
                    "city_id": city_id,
                    "region_pk": int(pks[im.region]),
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
                if im.kind == kind and want[im.region]
            ),
        )

    want, old = wanted("mobility")
    mob = bundle.mobility
    delete_in(session, Mobility, Mobility.region_pk, old)
    delete_in(session, OdFlow, OdFlow.origin_pk, old)
    delete_in(session, OdFlow, OdFlow.dest_pk, old)
    _insert_rows(
        session,
        Mobility,
        (
            {"region_pk": int(pks[i]), "inflow": int(mob.inflow[i]), "outflow": int(mob.outflow[i])}
            for i in _indexes(want & ((mob.inflow > 0) | (mob.outflow > 0)))
        ),
    )
    origin, dest, trips = mob.od_pairs()
    _insert_rows(
        session,
        OdFlow,
        (
            {"origin_pk": int(pks[origin[j]]), "dest_pk": int(pks[dest[j]]), "trips": int(trips[j])}
            for j in _indexes(want[origin] | want[dest])
        ),
    )

    want, old = wanted("indicators")
    delete_in(
        session,
        Indicator,
        Indicator.region_pk,
        old,
        Indicator.source == INDICATOR_SOURCE,
    )
    indicators = bundle.indicators
    _insert_rows(
        session,
        Indicator,
        (
            {"region_pk": int(pks[i]), "name": k, "value": v, "source": INDICATOR_SOURCE}
            for i in _indexes(want)
            for k, v in indicators.get(i, {}).items()
        ),
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
    ind = bundle.indicators
    known = (~np.isnan(ind.table)).sum(axis=0).tolist() if ind.table.size else []
    indicator_values = {k: c for k, c in zip(ind.names, known, strict=True) if c}
    mob = bundle.mobility
    return {
        "regions": len(bundle.regions),
        "pois": len(bundle.pois),
        "images": {"remote": by_kind["remote"], "street": by_kind["street"]},
        "trips": {
            "rows": mob.rows,
            "od": int(mob.od_counts.sum()),
            "out": int(mob.outflow.sum()),
            "in": int(mob.inflow.sum()),
        },
        "indicators": dict(sorted(indicator_values.items())),
        "census_layers": {layer.name: len(layer.features) for layer in bundle.census},
    }
