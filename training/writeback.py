"""The end of a run: what it produced, and its write-back as a new, active model version with
its metrics, once the city is known to hold the data it trained on."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session

import musecl_store
from musecl_store.embedding.inputs import CityData
from musecl_store.embedding.run import RegionEmbeddings
from musecl_store.store.chunks import rows_in
from musecl_store.store.tables import City, ModelVersion, TextEmbedding
from training.checkpoint import History
from training.config import TrainConfig
from training.data import TrainingError, city_content


@dataclass
class Fitted:
    """What a run produced before anything is written: embeddings and the weights file."""

    result: RegionEmbeddings
    checkpoint: Path
    seconds: float


@dataclass
class TrainResult:
    model_version_id: int
    revision: int
    run_dir: Path
    checkpoint: Path
    history: History
    counts: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version_id,
            "revision": self.revision,
            "checkpoint": str(self.checkpoint),
            "history": self.history,
            "embeddings": self.counts,
            "seconds": round(self.seconds, 1),
        }


def library_versions() -> dict[str, str]:
    import transformers

    return {
        "musecl_store": musecl_store.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def check_unchanged(s: Session, data: CityData, content: str) -> None:
    """The regions written to must be the ones trained on, with the same content."""
    name = data.city.name
    # FOR UPDATE (PostgreSQL): an ingest, which bumps the city's revision, waits for us.
    city = s.scalar(select(City).where(City.id == data.city.id).with_for_update())
    if city is None:
        raise TrainingError(f"city {name!r} was deleted while it trained; nothing was written")
    if city_content(s, data) != content:
        raise TrainingError(
            f"city {name!r} was re-ingested with other data while it trained, so these "
            "embeddings do not fit it; nothing was written. Train again: the new data "
            "make a new run"
        )


def not_cached(s: Session, rows: list[TextEmbedding]) -> list[TextEmbedding]:
    """The text-cache rows still missing: another run may have cached the same POI texts
    while this one trained."""
    keys = sorted({r.content_hash for r in rows})
    stmt = select(TextEmbedding.encoder, TextEmbedding.content_hash)
    have = {(e, k) for e, k in rows_in(s, stmt, TextEmbedding.content_hash, keys)}
    return [r for r in rows if (r.encoder, r.content_hash) not in have]


def add_model_version(
    s: Session,
    data: CityData,
    config: TrainConfig,
    metrics: dict[str, Any],
    checkpoint: Path,
) -> ModelVersion:
    """Add the run's model version as the city's active one (the others made inactive)."""
    s.execute(update(ModelVersion).where(ModelVersion.city_id == data.city.id).values(active=False))
    mv = ModelVersion(
        city_id=data.city.id,
        config=config.to_dict(),
        seed=config.seed,
        data_revision=data.city.revision,
        library_versions=library_versions(),
        metrics=metrics,
        checkpoint_path=str(checkpoint.resolve()),
        active=True,
    )
    s.add(mv)
    s.flush()
    return mv


def run_metrics(history: History, seconds: float, result: RegionEmbeddings) -> dict[str, Any]:
    """The metrics stored with the model version: losses, time, imputed rows, attention."""
    return {
        "history": history,
        "seconds": round(seconds, 1),
        "imputed": {k: int(v.sum()) for k, v in result.imputed.items()},
        "mean_attention": {
            m: round(float(a.mean()), 4)
            for m, a in zip(result.branches, result.alpha.T, strict=True)
        },
    }
