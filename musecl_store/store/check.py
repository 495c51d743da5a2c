"""``musecl db check``: verify the invariants every command promises to keep, even when killed.

Errors (the store is damaged; a bug or a fault the transaction did not cover):
- more than one vector per (region, model version, kind); a vector of the wrong length or
  with NaN/inf; vectors of several dimensions in one (model version, kind);
- a model version without embeddings, or a city with more than one active model version;
- a city half-ingested: without regions, without the ingest revision that made it, or with
  another region count than its newest ingest recorded;
- a change log that disagrees with the revisions: a region whose revision is not the newest
  change-log entry that added or updated it, rows (regions, embeddings, cities) stamped with a
  revision that does not exist;
- on SpatiaLite, a failed ``PRAGMA quick_check`` or ``foreign_key_check``.

Warnings (nothing is lost; the next command repairs it): FAISS index caches that are stale,
unreadable or left over by a killed save (rebuilt or swept on the next search), a model
version whose checkpoint file is missing (it cannot re-embed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store.store import dialect
from musecl_store.store.tables import City, Embedding, ModelVersion, Region, RegionChange, Revision


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "warnings": self.warnings,
            "checked": self.checked,
        }


def _scalar(session: Session, stmt: Any) -> int:
    return int(session.scalar(stmt) or 0)


def check_store(session: Session) -> CheckReport:
    """Check the store's invariants in one read transaction (the FAISS cache's state is
    added by :func:`musecl_store.search.index.check_cache`)."""
    report = CheckReport()
    _check_revisions(session, report)
    _check_cities(session, report)
    _check_embeddings(session, report)
    _check_models(session, report)
    if dialect.name(session) == "sqlite":
        _check_sqlite(session, report)
    return report


def _check_revisions(session: Session, report: CheckReport) -> None:
    newest = _scalar(session, select(func.coalesce(func.max(Revision.id), 0)))
    report.checked["revisions"] = _scalar(session, select(func.count()).select_from(Revision))
    for table, column in (
        ("cities", City.revision),
        ("regions", Region.revision),
        ("embeddings", Embedding.revision),
    ):
        missing = _scalar(
            session,
            select(func.count())
            .select_from(column.class_)
            .where(~column.in_(select(Revision.id)), column != 0),
        )
        if missing:
            report.errors.append(
                f"{missing} row(s) of {table} carry a revision that does not exist "
                f"(the newest is {newest})"
            )


def _check_cities(session: Session, report: CheckReport) -> None:
    cities = session.execute(select(City.id, City.name)).all()
    report.checked["cities"] = len(cities)
    report.checked["regions"] = _scalar(session, select(func.count()).select_from(Region))
    for cid, name in cities:
        n = _scalar(session, select(func.count()).where(Region.city_id == cid))
        if n == 0:
            report.errors.append(f"city {name!r} has no regions (half-ingested)")
        last = session.execute(
            select(Revision.id, Revision.summary)
            .where(Revision.city_id == cid, Revision.operation == "ingest")
            .order_by(Revision.id.desc())
            .limit(1)
        ).first()
        if last is None:
            report.errors.append(f"city {name!r} has no ingest revision (half-ingested)")
            continue
        total = ((last.summary or {}).get("regions") or {}).get("total")
        if total is not None and int(total) != n:
            report.errors.append(
                f"city {name!r} holds {n} regions, its ingest at revision {last.id} wrote "
                f"{total} (half-ingested)"
            )
    # the change log: each region's revision is the newest entry that added or updated it
    newest_change = (
        select(
            RegionChange.city_id,
            RegionChange.region_id,
            func.max(RegionChange.revision_id).label("rev"),
        )
        .where(RegionChange.change.in_(("added", "updated")))
        .group_by(RegionChange.city_id, RegionChange.region_id)
        .subquery()
    )
    rows = session.execute(
        select(City.name, Region.region_id, Region.revision, newest_change.c.rev)
        .join(City, City.id == Region.city_id)
        .outerjoin(
            newest_change,
            (newest_change.c.city_id == Region.city_id)
            & (newest_change.c.region_id == Region.region_id),
        )
        .where((newest_change.c.rev.is_(None)) | (newest_change.c.rev != Region.revision))
        .limit(20)
    ).all()
    for city, rid, rev, logged in rows:
        report.errors.append(
            f"region {rid!r} of {city!r} is at revision {rev} but the change log's newest "
            f"entry for it is {logged if logged is not None else 'missing'}"
        )


def _check_embeddings(session: Session, report: CheckReport) -> None:
    report.checked["embeddings"] = _scalar(session, select(func.count()).select_from(Embedding))
    dupes = session.execute(
        select(Embedding.region_pk, Embedding.model_version_id, Embedding.kind, func.count())
        .group_by(Embedding.region_pk, Embedding.model_version_id, Embedding.kind)
        .having(func.count() > 1)
        .limit(20)
    ).all()
    for pk, mv, kind, n in dupes:
        report.errors.append(f"region pk {pk} has {n} {kind} vectors of model version {mv}")
    groups = session.execute(
        select(
            Embedding.model_version_id, Embedding.kind, func.count(func.distinct(Embedding.dim))
        ).group_by(Embedding.model_version_id, Embedding.kind)
    ).all()
    name = dialect.name(session)
    for mv, kind, dims in groups:
        if dims != 1:
            report.errors.append(f"model version {mv} has {kind} vectors of {dims} dimensions")
            continue
        _check_vectors(session, int(mv), str(kind), name, report)


def _check_vectors(session: Session, mv: int, kind: str, name: str, report: CheckReport) -> None:
    """Every vector decodes to ``dim`` finite floats (read in chunks of regions)."""
    import numpy as np

    last, bad = -1, 0
    while True:
        rows = session.execute(
            select(Embedding.region_pk, Embedding.dim, dialect.vector_wire(Embedding.vector, name))
            .where(
                Embedding.model_version_id == mv,
                Embedding.kind == kind,
                Embedding.region_pk > last,
            )
            .order_by(Embedding.region_pk)
            .limit(20_000)
        ).all()
        if not rows:
            break
        last = int(rows[-1][0])
        dim = int(rows[0][1])
        try:
            vecs = dialect.decode_vectors([r[2] for r in rows], dim, name)
        except ValueError:
            report.errors.append(f"model version {mv} has {kind} vectors of the wrong length")
            return
        bad += int((~np.isfinite(vecs).all(axis=1)).sum())
    if bad:
        report.errors.append(f"model version {mv} has {bad} {kind} vector(s) with NaN or inf")


def _check_models(session: Session, report: CheckReport) -> None:
    models = session.execute(
        select(
            ModelVersion.id, ModelVersion.city_id, ModelVersion.active, ModelVersion.checkpoint_path
        )
    ).all()
    report.checked["model_versions"] = len(models)
    per_mv = dict(
        session.execute(
            select(Embedding.model_version_id, func.count()).group_by(Embedding.model_version_id)
        ).all()
    )
    active: dict[int | None, list[int]] = {}
    for mv, city_id, is_active, checkpoint in models:
        if not per_mv.get(mv):
            report.errors.append(f"model version {mv} has no embeddings")
        if is_active:
            active.setdefault(city_id, []).append(mv)
        if checkpoint and not Path(checkpoint).is_file():
            report.warnings.append(
                f"model version {mv}: its checkpoint {checkpoint} is missing (it cannot "
                "embed or re-embed; search still works)"
            )
    for city_id, mvs in active.items():
        if len(mvs) > 1:
            report.errors.append(f"city id {city_id} has {len(mvs)} active model versions: {mvs}")


def _check_sqlite(session: Session, report: CheckReport) -> None:
    result = [row[0] for row in session.connection().exec_driver_sql("PRAGMA quick_check")]
    if result != ["ok"]:
        report.errors.append("SQLite quick_check: " + "; ".join(map(str, result[:5])))
    fk = session.connection().exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if fk:
        report.errors.append(f"SQLite foreign_key_check: {len(fk)} row(s) point nowhere")
