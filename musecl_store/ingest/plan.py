"""The plan of an ingest: what a read bundle would add, update and remove in the store.

Planning only reads (it takes no lock and writes nothing), so ``musecl ingest --check`` can
run it on a read session, or on no session at all for a store that does not exist yet;
:func:`musecl_store.ingest.apply.apply_plan` carries a plan out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store.bundle.reader import Bundle
from musecl_store.bundle.report import Report
from musecl_store.ingest.hashes import ALL, EMPTY, RegionHashes, indexes, region_hashes
from musecl_store.store import chunks
from musecl_store.store.tables import IMAGE_KINDS, MODALITIES, CensusLayer, City, Region

_SUMMARY_KEYS = ("city", "revision", "changed", "city_created", "regions", "changes", "counts")


@dataclass
class IngestSummary:
    """What an ingest did. ``revision`` is ``None`` when nothing changed, and in the summary
    of a plan (nothing written yet), where ``pending`` says whether applying it would write."""

    city: str
    revision: int | None
    city_created: bool
    regions: dict[str, int]
    changes: list[dict[str, Any]]
    counts: dict[str, Any]
    census: dict[str, list[str]]
    report: Report = field(default_factory=Report)
    pending: bool = False

    @property
    def changed(self) -> bool:
        return self.revision is not None or self.pending

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _SUMMARY_KEYS}
        out["census_layers"] = self.census
        out["problems"] = self.report.to_dict()
        return out


@dataclass
class RegionDiff:
    """The bundle's regions against the store's."""

    hashes: RegionHashes
    old_pk: np.ndarray  # per bundle region: its row in the store, -1: none
    modified: np.ndarray  # per bundle region: bit k set when MODALITIES[k] changed
    removed: dict[str, int]  # region id -> row, of the store's regions not in the bundle


@dataclass
class IngestPlan:
    """What ingesting ``bundle`` would change, against the store as :func:`plan_bundle` read
    it; apply it in that same transaction (or one that sees the same store)."""

    bundle: Bundle
    summary: IngestSummary
    city_id: int | None  # the city's row; None: the city is new
    city_fields: dict[str, Any]  # the city row's columns as the bundle sets them
    city_changed: bool
    regions: RegionDiff
    census_old: dict[str, tuple[int, str]]  # the store's layers: name -> (row, content hash)

    @property
    def changed(self) -> bool:
        """Whether applying the plan writes anything (a revision)."""
        s = self.summary
        return bool(s.changes or self.city_changed or any(s.census.values()))


def plan_bundle(session: Session | None, bundle: Bundle) -> IngestPlan:
    """Compare a read bundle with the store; reads only.

    Args:
        session: a session on the store, or None for a store that does not exist yet (every
            region, layer and the city are then new).
        bundle: from :func:`~musecl_store.bundle.reader.read_bundle`.

    Returns:
        The plan; its ``summary`` is what :func:`~musecl_store.ingest.apply.apply_plan`
        returns, but for ``revision`` (None until written).
    """
    spec = bundle.city
    city = None if session is None else session.scalar(select(City).where(City.name == spec.name))
    city_id = None if city is None else city.id
    regions = _diff_regions(session, city_id, bundle)
    census_old = _store_layers(session, city_id)
    city_fields = {
        "crs": spec.crs,
        "h3_resolution": spec.h3_resolution,
        "meta": spec.meta,
        "source_path": str(bundle.root),
    }
    city_changed = city is None or any(getattr(city, k) != v for k, v in city_fields.items())
    summary = _summary(bundle, city is None, regions, _diff_census(bundle, census_old))
    plan = IngestPlan(bundle, summary, city_id, city_fields, city_changed, regions, census_old)
    summary.pending = plan.changed
    return plan


def _diff_regions(session: Session | None, city_id: int | None, bundle: Bundle) -> RegionDiff:
    """Per bundle region its row in the store (-1: none) and the bits of the modalities whose
    hash changed (all for a new region); the store's regions that the bundle lacks."""
    hashes = region_hashes(bundle)
    n = len(bundle.regions)
    new_ids = {r.region_id: i for i, r in enumerate(bundle.regions)}
    diff = RegionDiff(hashes, np.full(n, -1, np.int64), np.full(n, ALL, np.uint8), {})
    if session is None or city_id is None:
        return diff
    cols = [getattr(Region, f"hash_{m}") for m in MODALITIES]
    stmt = select(Region.id, Region.region_id, *cols).where(Region.city_id == city_id)
    for pk, rid, *old in session.execute(stmt.execution_options(yield_per=chunks.IN_CHUNK)):
        i = new_ids.get(rid)
        if i is None:
            diff.removed[rid] = pk
            continue
        diff.old_pk[i] = pk
        diff.modified[i] = sum(
            1 << k for k, m in enumerate(MODALITIES) if old[k] != hashes.hex(i, m)
        )
    return diff


def _summary(
    bundle: Bundle, city_created: bool, regions: RegionDiff, census: dict[str, list[str]]
) -> IngestSummary:
    n = len(bundle.regions)
    n_added = int((regions.old_pk < 0).sum())
    n_touched = int(np.count_nonzero(regions.modified))
    return IngestSummary(
        city=bundle.city.name,
        revision=None,
        city_created=city_created,
        regions={
            "added": n_added,
            "updated": n_touched - n_added,
            "removed": len(regions.removed),
            "unchanged": n - n_touched,
            "total": n,
        },
        changes=_change_list(bundle, regions),
        counts=_bundle_counts(bundle),
        census=census,
        report=bundle.report,
    )


def _change_list(bundle: Bundle, regions: RegionDiff) -> list[dict[str, Any]]:
    """The change log's rows: each added or updated region with the modalities it has (or
    that changed), then each removed one."""
    hashes, old_pk, modified = regions.hashes, regions.old_pk, regions.modified
    changes: list[dict[str, Any]] = []
    # one (immutable) modality tuple per kind of change, not one list per region
    shared: dict[tuple[str, int], tuple[str, ...]] = {}
    for i in indexes(modified != 0):
        if old_pk[i] < 0:
            bits = sum(
                1 << k
                for k, m in enumerate(MODALITIES)
                if m == "geometry" or hashes.hex(i, m) != EMPTY
            )
            key = ("added", bits)
        else:
            key = ("updated", int(modified[i]))
        mods = shared.setdefault(key, tuple(m for k, m in enumerate(MODALITIES) if key[1] >> k & 1))
        changes.append(
            {"region_id": bundle.regions[i].region_id, "change": key[0], "modalities": mods}
        )
    changes.extend(
        {"region_id": rid, "change": "removed", "modalities": ()} for rid in sorted(regions.removed)
    )
    return changes


def _store_layers(session: Session | None, city_id: int | None) -> dict[str, tuple[int, str]]:
    """The city's census layers in the store: name -> (row, content hash)."""
    if session is None or city_id is None:
        return {}
    stmt = select(CensusLayer.id, CensusLayer.name, CensusLayer.content_hash).where(
        CensusLayer.city_id == city_id
    )
    return {n: (i, h) for i, n, h in session.execute(stmt)}


def _diff_census(bundle: Bundle, old: dict[str, tuple[int, str]]) -> dict[str, list[str]]:
    """The census layers added, updated (another content hash) and removed, by name."""
    new = {layer.name: layer for layer in bundle.census}
    return {
        "added": sorted(set(new) - set(old)),
        "updated": sorted(n for n in new if n in old and old[n][1] != new[n].content_hash),
        "removed": sorted(set(old) - set(new)),
    }


def _bundle_counts(bundle: Bundle) -> dict[str, Any]:
    """What the bundle holds, counted (the summary's ``counts``)."""
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
        "images": {kind: by_kind[kind] for kind in IMAGE_KINDS},
        "trips": {
            "rows": mob.rows,
            "od": int(mob.od_counts.sum()),
            "out": int(mob.outflow.sum()),
            "in": int(mob.inflow.sum()),
        },
        "indicators": dict(sorted(indicator_values.items())),
        "census_layers": {layer.name: len(layer.features) for layer in bundle.census},
    }
