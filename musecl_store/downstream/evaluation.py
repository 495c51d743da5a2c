"""The paper's evaluation table: how well each embedding predicts each indicator.

Rows (``EMBEDDINGS``): ``counts`` (a classical baseline without learning: log POI-category
counts and log in/out trip counts), ``remote``, ``street``, ``poi``, ``concat``
(remote|street|poi), ``add`` (remote+street), ``fused_visual`` (the paper's fusion of the two
visual embeddings only), ``fused`` (MuseCL) and ``counts+fused`` (does the vector add
anything to the counts?). For every indicator, each is scored by 5-fold cross-validation with
the paper's MLP head (512-256-128-64, mini-batch Adam, early stopping) and with ridge
regression (penalty by closed-form leave-one-out): R², RMSE and MAPE, mean and spread over
the folds.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store.downstream.crossval import (
    HEADS,
    CVJob,
    fold_summary,
    mlp_cv_many,
    ridge_cv,
)
from musecl_store.downstream.mlp import EvalConfig, torch_threads
from musecl_store.downstream.ridge import kfold_indices
from musecl_store.embedding.run import visual_fusion_vectors
from musecl_store.errors import MuseclError
from musecl_store.nn.model import CheckpointError
from musecl_store.progress import progress
from musecl_store.store.cities import get_city
from musecl_store.store.tables import Indicator, Mobility, ModelVersion, Poi, Region
from musecl_store.store.vectors import load_embeddings
from musecl_store.store.versions import resolve as resolve_model_version

EMBEDDINGS = (
    "counts",
    "remote",
    "street",
    "poi",
    "concat",
    "add",
    "fused_visual",
    "fused",
    "counts+fused",
)


class EvaluationError(MuseclError, LookupError):
    """Nothing to evaluate: an unknown indicator or model version."""


def count_features(session: Session, city_id: int, ids: list[str]) -> np.ndarray:
    """The ``counts`` baseline for regions ``ids``: log1p of POI counts per category and of
    trips in and out."""
    index = {r: i for i, r in enumerate(ids)}
    cats = session.execute(
        select(Region.region_id, Poi.category)
        .join(Poi, Poi.region_pk == Region.id)
        .where(Region.city_id == city_id)
    ).all()
    names = sorted({c for _, c in cats})
    code = {c: j for j, c in enumerate(names)}
    counts = np.zeros((len(ids), len(names) + 2))
    for rid, cat in cats:
        if rid in index:
            counts[index[rid], code[cat]] += 1
    for rid, inflow, outflow in session.execute(
        select(Region.region_id, Mobility.inflow, Mobility.outflow)
        .join(Mobility, Mobility.region_pk == Region.id)
        .where(Region.city_id == city_id)
    ).all():
        if rid in index:
            counts[index[rid], -2:] = (inflow, outflow)
    return np.log1p(counts)


def feature_sets(
    session: Session, city_id: int, model_version_id: int
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Region ids and the feature matrix of every row of the table.

    ``fused_visual`` is the model's visual-only fusion of the stored remote and street
    vectors (not stored itself); it is left out when the model file cannot be read (a
    store moved without its checkpoints), as the other rows need no model file.
    """
    vecs: dict[str, np.ndarray] = {}
    ids: list[str] = []
    for kind in ("remote", "street", "poi", "fused", "fused_visual"):
        if kind == "fused_visual":  # the paper's fusion, computed from the stored vectors
            try:
                ids_k, mat = visual_fusion_vectors(session, model_version_id, city_id)
            except CheckpointError:
                continue
        else:
            ids_k, mat = load_embeddings(session, model_version_id, kind, city_id)
        if kind == "fused_visual" and not ids_k:
            continue
        if ids and ids_k != ids:  # pragma: no cover - written together by training
            raise EvaluationError(f"model version {model_version_id} has ragged embeddings")
        ids, vecs[kind] = ids_k, mat
    if not ids:
        raise EvaluationError(f"model version {model_version_id} has no embeddings for this city")
    vecs["counts"] = count_features(session, city_id, ids)
    vecs["concat"] = np.concatenate([vecs["remote"], vecs["street"], vecs["poi"]], axis=1)
    vecs["add"] = vecs["remote"] + vecs["street"]
    # does the learned vector add anything to what the counts already know?
    vecs["counts+fused"] = np.concatenate([vecs["counts"], vecs["fused"]], axis=1)
    return ids, vecs


def model_version_for(session: Session, city: str, version: int | None) -> ModelVersion:
    """The model version to score: the given one (of this city), else the active one."""
    mv = session.get(ModelVersion, resolve_model_version(session, city, version))
    if mv is None or mv.city_id != get_city(session, city).id:
        raise EvaluationError(f"model version {version} does not exist for this city")
    return mv


def evaluate_city(
    session: Session,
    city: str,
    *,
    model_version: int | None = None,
    indicators: list[str] | None = None,
    cfg: EvalConfig | None = None,
    save: bool = True,
    show_progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Score every embedding on every indicator; saves the records in the model's metrics.

    Args:
        show_progress: a progress bar over the embeddings on stderr; ``None`` follows
            ``MUSECL_PROGRESS`` and shows it only on a terminal.

    Returns:
        records ``{"indicator", "embedding", "head", "r2", "r2_std", "rmse", "mape", "n"}``.

    Raises:
        EvaluationError: an unknown indicator, or no trained model.
    """
    cfg = cfg or EvalConfig()
    c = get_city(session, city)
    mv = model_version_for(session, city, model_version)
    ids, feats = feature_sets(session, c.id, mv.id)
    targets = _targets(session, city, c.id, ids, indicators, cfg)
    wanted = list(targets)

    def score_row(emb: str) -> dict[str, dict[str, dict[str, float]]]:
        x = feats[emb]
        # every indicator's folds in one batch of networks: the same results as one by one
        mlp = mlp_cv_many(x, list(targets.values()), cfg)
        return {
            name: {
                "mlp": fold_summary(y, pred, folds),
                "ridge": fold_summary(y, ridge_cv(x[rows], y, folds), folds),
            }
            for (name, (rows, y, folds)), pred in zip(targets.items(), mlp, strict=True)
        }

    scores: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    embs = [e for e in EMBEDDINGS if e in feats]
    # Rows in parallel threads (torch lets go of the GIL in its kernels), each on
    # cfg.mlp_threads torch threads: every row's numbers are the same as one at a time.
    with torch_threads(cfg.mlp_threads), ThreadPoolExecutor(cfg.workers) as pool:
        futures = {pool.submit(score_row, emb): emb for emb in embs}
        done = as_completed(futures)
        for fut in progress(
            done, desc="evaluate", total=len(embs), unit="row", enabled=show_progress
        ):
            for name, by_head in fut.result().items():
                scores[name, futures[fut]] = by_head
    records = [
        _record(name, emb, head, m, len(targets[name][1]))
        for name in wanted
        for emb in embs
        for head, m in scores[name, emb].items()
    ]
    if save:
        mv.metrics = {
            **(mv.metrics or {}),
            "evaluation": {"log_target": cfg.log_target, "folds": cfg.folds, "records": records},
        }
    return records


def _targets(
    session: Session,
    city: str,
    city_id: int,
    ids: list[str],
    indicators: list[str] | None,
    cfg: EvalConfig,
) -> dict[str, CVJob]:
    """Every indicator to score (given, else all the city's) as (rows of ``ids``, targets,
    folds), each checked before the long part starts.

    Raises:
        EvaluationError: an unknown indicator, negative values with ``log_target``, too few
            values for the folds.
    """
    values = session.execute(
        select(Indicator.name, Region.region_id, Indicator.value)
        .join(Region, Region.id == Indicator.region_pk)
        .where(Region.city_id == city_id)
    ).all()
    known = sorted({n for n, _, _ in values})
    wanted = indicators or known
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise EvaluationError(
            f"indicator(s) {', '.join(unknown)} do not exist for city {city!r}; it has "
            f"{', '.join(known) if known else 'no indicators'}"
        )
    index = {r: i for i, r in enumerate(ids)}
    targets: dict[str, CVJob] = {}
    for name in wanted:
        pairs = [(index[r], v) for n, r, v in values if n == name and r in index]
        rows = np.array([p[0] for p in pairs], dtype=np.int64)
        y = np.array([p[1] for p in pairs], dtype=np.float64)
        if cfg.log_target:
            if (y < 0).any():
                raise EvaluationError(
                    f"--log-target needs non-negative values; {name} has some < 0"
                )
            y = np.log1p(y)
        if len(y) < 2 * cfg.folds:
            raise EvaluationError(
                f"indicator {name} has only {len(y)} values; too few for "
                f"{cfg.folds}-fold cross-validation"
            )
        targets[name] = (rows, y, kfold_indices(len(y), cfg.folds, cfg.seed))
    return targets


def _record(name: str, emb: str, head: str, m: dict[str, float], n: int) -> dict[str, Any]:
    """One row of the table, rounded as it is stored and shown."""
    return {
        "indicator": name,
        "embedding": emb,
        "head": head,
        "r2": round(m["r2"], 4),
        "r2_std": round(m["r2_std"], 4),
        "rmse": round(m["rmse"], 4),
        "mape": round(m["mape"], 2),
        "n": n,
    }


def markdown_table(records: list[dict[str, Any]]) -> str:
    """Rows = embeddings, one column per (indicator, head): R² ± std; then the mean R² over
    the indicators of each head."""
    inds = list(dict.fromkeys(r["indicator"] for r in records))
    cols = [(i, h) for i in inds for h in HEADS]
    by = {(r["embedding"], r["indicator"], r["head"]): r for r in records}
    lines = [
        "| embedding | "
        + " | ".join(f"{i} ({h})" for i, h in cols)
        + " | "
        + " | ".join(f"mean R² ({h})" for h in HEADS)
        + " |",
        "| --- |" + " --- |" * (len(cols) + len(HEADS)),
    ]
    present = {r["embedding"] for r in records}
    for emb in (e for e in EMBEDDINGS if e in present):  # no empty fused_visual row
        cells = []
        for i, h in cols:
            r = by.get((emb, i, h))
            cells.append(f"{r['r2']:.3f} ± {r['r2_std']:.3f}" if r else "")
        for h in HEADS:
            r2s = [by[(emb, i, h)]["r2"] for i in inds if (emb, i, h) in by]
            cells.append(f"{np.mean(r2s):.3f}" if r2s else "")
        lines.append(f"| {emb} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
