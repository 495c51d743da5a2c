"""Model versions: list, activate, delete. Training again adds a version beside the old ones;
exactly one version per city is active (the one searches and exports use by default)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from musecl_store.errors import MuseclError
from musecl_store.store.cities import get_city
from musecl_store.store.tables import City, Embedding, ModelVersion, Region


class ModelVersionError(MuseclError, ValueError):
    """An unknown model version, or an operation it refuses (deleting the active one)."""


def active_model_version(session: Session, city: str) -> int:
    c = get_city(session, city)
    mv = session.scalar(
        select(ModelVersion.id).where(ModelVersion.city_id == c.id, ModelVersion.active.is_(True))
    )
    if mv is None:
        others = sorted(
            set(
                session.scalars(
                    select(Embedding.model_version_id)
                    .join(Region, Region.id == Embedding.region_pk)
                    .where(Region.city_id == c.id)
                    .distinct()
                )
            )
        )
        if others:
            raise ModelVersionError(
                f"city {city!r} has no model of its own; pass --model-version "
                f"(it has embeddings of version(s) {', '.join(map(str, others))})"
            )
        raise ModelVersionError(
            f"city {city!r} has no trained model; run `musecl train --city {city}`"
        )
    return int(mv)


def resolve(session: Session, city: str, model_version: int | None) -> int:
    """The rule every verb follows: the given model version, else the city's active one.

    Raises:
        ModelVersionError: no version given and the city has no active one (saying why).
    """
    return model_version if model_version is not None else active_model_version(session, city)


def _get(session: Session, version: int) -> ModelVersion:
    mv = session.get(ModelVersion, version)
    if mv is None:
        known = list(session.scalars(select(ModelVersion.id).order_by(ModelVersion.id)))
        raise ModelVersionError(
            f"model version {version} does not exist (known: "
            f"{', '.join(map(str, known)) or 'none'})"
        )
    return mv


def list_models(session: Session, city: str | None = None) -> list[dict[str, Any]]:
    """Every version (of one city, when given) with its embedding count and key metrics."""
    stmt = (
        select(ModelVersion, City.name, func.count(Embedding.id))
        .join(City, City.id == ModelVersion.city_id, isouter=True)
        .join(Embedding, Embedding.model_version_id == ModelVersion.id, isouter=True)
        .group_by(ModelVersion.id, City.name)
        .order_by(ModelVersion.id)
    )
    if city is not None:
        stmt = stmt.where(ModelVersion.city_id == get_city(session, city).id)
    out = []
    for mv, name, n in session.execute(stmt).all():
        evaluation = (mv.metrics or {}).get("evaluation", {}).get("records", [])
        fused = [r["r2"] for r in evaluation if r["embedding"] == "fused" and r["head"] == "mlp"]
        out.append(
            {
                "model_version": mv.id,
                "city": name,
                "active": mv.active,
                "seed": mv.seed,
                "data_revision": mv.data_revision,
                "embeddings": int(n),
                "created_at": mv.created_at.isoformat() if mv.created_at else None,
                "checkpoint": mv.checkpoint_path,
                "fused_mean_r2": round(sum(fused) / len(fused), 4) if fused else None,
            }
        )
    return out


def activate(session: Session, version: int) -> ModelVersion:
    """Make ``version`` its city's active model (and no other)."""
    mv = _get(session, version)
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.city_id == mv.city_id, ModelVersion.id != mv.id)
        .values(active=False)
    )
    mv.active = True
    session.flush()
    return mv


def delete(session: Session, version: int, index_dir: str | Path | None = None) -> dict[str, Any]:
    """Delete a version with its embeddings, regressors and cached indexes.

    Raises:
        ModelVersionError: unknown, or active (activate another one first).
    """
    mv = _get(session, version)
    if mv.active:
        raise ModelVersionError(
            f"model version {version} is active; activate another version "
            "first (`musecl models activate V`), then delete this one"
        )
    n = (
        session.scalar(
            select(func.count()).select_from(Embedding).where(Embedding.model_version_id == version)
        )
        or 0
    )
    session.delete(mv)  # embeddings and regressors cascade in the database
    session.flush()
    removed = []
    if index_dir is not None:
        for folder in Path(index_dir).glob(f"mv{version}-*"):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return {"model_version": version, "embeddings_deleted": int(n), "indexes_removed": removed}
