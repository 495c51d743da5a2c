"""Indicator regression on region embeddings: fit with honest cross-validated metrics, then
predict where the indicator is unknown and write the predictions back with provenance.

A regressor reads one model version's embeddings of one kind, so it can predict any city
embedded by that version (``musecl embed`` puts another city into the same space): that is
cross-city transfer.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store.downstream.crossval import HEADS, holdout_masks, score
from musecl_store.downstream.mlp import EvalConfig, MLPFit, train_mlps
from musecl_store.downstream.ridge import ridge_fit_auto
from musecl_store.errors import MuseclError
from musecl_store.hashing import digest
from musecl_store.store.chunks import delete_in
from musecl_store.store.cities import get_city
from musecl_store.store.tables import (
    Indicator,
    ModelVersion,
    Prediction,
    Region,
    Regressor,
    Revision,
)
from musecl_store.store.vectors import load_embeddings
from musecl_store.store.versions import resolve as resolve_model_version


class RegressionError(MuseclError, LookupError):
    """An unknown regressor or indicator, or a city without the embeddings it needs."""


def _targets(session: Session, city_id: int, indicator: str) -> dict[str, float]:
    rows = session.execute(
        select(Region.region_id, Indicator.value)
        .join(Indicator, Indicator.region_pk == Region.id)
        .where(Region.city_id == city_id, Indicator.name == indicator)
    ).all()
    return {r: float(v) for r, v in rows}


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclass
class FittedRegressor:
    """A fitted regressor not yet stored (see :func:`save`)."""

    id: str
    city_id: int
    model_version_id: int
    kind: str
    indicator: str
    head: str
    log_target: bool
    params: dict[str, np.ndarray]
    metrics: dict[str, Any]


def fit(session: Session, city: str, indicator: str, **options: Any) -> Regressor:
    """Cross-validate, fit and store a regressor in one session (see :func:`fit_params`)."""
    return save(session, fit_params(session, city, indicator, **options))


def fit_params(
    session: Session,
    city: str,
    indicator: str,
    *,
    model_version: int | None = None,
    kind: str = "fused",
    head: str = "mlp",
    log_target: bool = False,
    folds: int = 5,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> FittedRegressor:
    """Cross-validate, then fit on every labelled region; only reads the store (the slow
    part runs with nothing locked; :func:`save` writes the result).

    Args:
        log: told what step is running (the MLP head takes a while); ``None`` is silent.

    Raises:
        RegressionError: unknown head or indicator, or too few labelled regions.
    """
    if head not in HEADS:
        raise RegressionError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    c = get_city(session, city)
    mv = resolve_model_version(session, city, model_version)
    ids, x = load_embeddings(session, mv, kind, c.id)
    targets = _targets(session, c.id, indicator)
    if not targets:
        known = sorted(
            set(
                session.scalars(
                    select(Indicator.name)
                    .join(Region, Region.id == Indicator.region_pk)
                    .where(Region.city_id == c.id)
                )
            )
        )
        raise RegressionError(
            f"indicator {indicator!r} does not exist for city {city!r}; it has "
            f"{', '.join(known) if known else 'no indicators'}"
        )
    rows = [i for i, r in enumerate(ids) if r in targets]
    if len(rows) < 2 * folds:
        raise RegressionError(f"only {len(rows)} regions have both {indicator} and embeddings")
    xs = x[rows]
    y = np.array([targets[ids[i]] for i in rows])
    if log_target:
        if (y < 0).any():
            raise RegressionError(f"--log-target needs non-negative values; {indicator} has some")
        y = np.log1p(y)
    say = log or (lambda _msg: None)
    cfg = EvalConfig(folds=folds, seed=seed, log_target=log_target)
    say(f"{folds}-fold cross-validation of the {head} head on {len(y)} regions ({kind}) ...")
    metrics = score(xs, y, cfg, heads=(head,))[head]  # only this head: the MLP is slow
    say(f"fitting the {head} head on all {len(y)} regions ...")
    if head == "ridge":
        w, b, alpha = ridge_fit_auto(xs, y)
        params = {"w": w, "b": np.array([b]), "alpha": np.array([alpha])}
    else:
        train, stop = holdout_masks(len(y), [np.array([], dtype=np.int64)], seed)
        params = train_mlps(xs, y, train, stop, cfg).arrays()
    rid = f"{indicator}-{head}-mv{mv}-{kind}-" + digest(city, seed, log_target, folds, len(y))[:8]
    return FittedRegressor(
        rid,
        c.id,
        mv,
        kind,
        indicator,
        head,
        log_target,
        params,
        {
            **{k: round(v, 5) for k, v in metrics.items()},
            "n": len(y),
            "folds": folds,
            "city": city,
            "log_target": log_target,
        },
    )


def save(session: Session, fitted: FittedRegressor) -> Regressor:
    """Store a fitted regressor (replacing one of the same id).

    Raises:
        RegressionError: its model version was deleted while it was fitted.
    """
    if session.get(ModelVersion, fitted.model_version_id) is None:
        raise RegressionError(
            f"model version {fitted.model_version_id} was deleted while the regressor was "
            "fitted; nothing was stored"
        )
    reg = session.get(Regressor, fitted.id)
    if reg is None:
        reg = Regressor(id=fitted.id)
        session.add(reg)
    reg.city_id, reg.model_version_id = fitted.city_id, fitted.model_version_id
    reg.kind, reg.indicator, reg.head = fitted.kind, fitted.indicator, fitted.head
    reg.log_target, reg.params, reg.metrics = (
        fitted.log_target,
        _pack(fitted.params),
        fitted.metrics,
    )
    session.flush()
    return reg


def apply(reg: Regressor, x: np.ndarray) -> np.ndarray:
    """Predictions of a stored regressor for a feature matrix, in the indicator's units."""
    p = _unpack(reg.params)
    out = x @ p["w"] + p["b"][0] if reg.head == "ridge" else MLPFit.from_arrays(p).predict(x)[0]
    return np.expm1(out) if reg.log_target else out


@dataclass
class PredictSummary:
    regressor: str
    city: str
    indicator: str
    written: int
    revision: int

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def predict(
    session: Session, regressor_id: str, city: str, *, all_regions: bool = False
) -> PredictSummary:
    """Predict the regressor's indicator for the city's regions that lack it (or all), and
    write them to ``predictions`` with the regressor id, its metrics and the model version.

    Raises:
        RegressionError: unknown regressor, or the city has no embeddings of its model version.
    """
    reg = session.get(Regressor, regressor_id)
    if reg is None:
        raise RegressionError(f"no regressor {regressor_id!r}; `musecl regress list` shows them")
    c = get_city(session, city)
    assert reg.model_version_id is not None
    ids, x = load_embeddings(session, reg.model_version_id, reg.kind, c.id)
    if not ids:
        raise RegressionError(
            f"city {city!r} has no {reg.kind} embeddings of model version {reg.model_version_id}; "
            f"embed it first: musecl embed --city {city} --model-version {reg.model_version_id}"
        )
    known = set() if all_regions else set(_targets(session, c.id, reg.indicator))
    rows = [i for i, r in enumerate(ids) if r not in known]
    values = apply(reg, x[rows]) if rows else np.zeros(0)
    pk_of = dict(
        session.execute(select(Region.region_id, Region.id).where(Region.city_id == c.id)).all()
    )
    rev = Revision(
        operation="predict",
        city_id=c.id,
        summary={"regressor": reg.id, "indicator": reg.indicator, "rows": len(rows)},
    )
    session.add(rev)
    session.flush()
    pks = [pk_of[ids[i]] for i in rows]
    delete_in(session, Prediction, Prediction.region_pk, pks, Prediction.regressor == reg.id)
    session.add_all(
        Prediction(
            region_pk=pk,
            indicator=reg.indicator,
            value=float(v),
            regressor=reg.id,
            model_version_id=reg.model_version_id,
            metrics=reg.metrics,
            revision=rev.id,
        )
        for pk, v in zip(pks, values, strict=True)
    )
    session.flush()
    return PredictSummary(reg.id, city, reg.indicator, len(rows), rev.id)


def describe(reg: Regressor) -> dict[str, Any]:
    """A regressor as a plain dict: id, model version, kind, indicator, head, CV metrics."""
    return {
        "regressor": reg.id,
        "model_version": reg.model_version_id,
        "kind": reg.kind,
        "indicator": reg.indicator,
        "head": reg.head,
        "metrics": reg.metrics,
    }


def list_regressors(session: Session) -> list[dict[str, Any]]:
    """Every fitted regressor, by id."""
    return [describe(r) for r in session.scalars(select(Regressor).order_by(Regressor.id))]


def predicted(session: Session, city: str) -> list[dict[str, Any]]:
    """The (regressor, indicator) pairs that have predictions for the city's regions."""
    c = get_city(session, city)
    rows = session.execute(
        select(Prediction.regressor, Prediction.indicator)
        .join(Region, Region.id == Prediction.region_pk)
        .where(Region.city_id == c.id)
        .distinct()
        .order_by(Prediction.regressor)
    ).all()
    return [{"regressor": r, "indicator": i} for r, i in rows]
