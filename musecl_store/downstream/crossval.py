"""Cross-validation of the two heads (the MLP and ridge): k-fold predictions, held-out
masks for early stopping, and the metrics (R², RMSE, MAPE)."""

from __future__ import annotations

import numpy as np

from musecl_store.downstream.mlp import EvalConfig, train_mlps
from musecl_store.downstream.ridge import kfold_indices, r2_score, ridge_fit_auto

HEADS = ("mlp", "ridge")


def metrics(y: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """R², RMSE and MAPE (in %, over targets that are not 0)."""
    rmse = float(np.sqrt(np.mean((y - pred) ** 2)))
    nz = y != 0
    mape = float(np.mean(np.abs((y[nz] - pred[nz]) / y[nz])) * 100) if nz.any() else float("nan")
    return r2_score(y, pred), rmse, mape


def holdout_masks(n: int, tests: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and early-stopping masks: all rows but the test ones, 10% of those held out."""
    rng = np.random.default_rng(seed)
    train = np.ones((len(tests), n), dtype=bool)
    stop = np.zeros((len(tests), n), dtype=bool)
    for k, test in enumerate(tests):
        train[k, test] = False
        idx = np.flatnonzero(train[k])
        held = rng.choice(idx, size=max(1, len(idx) // 10), replace=False)
        train[k, held] = False
        stop[k, held] = True
    return train, stop


CVJob = tuple[np.ndarray, np.ndarray, list[np.ndarray]]  # rows of x, their targets, folds


def mlp_cv_many(x: np.ndarray, jobs: list[CVJob], cfg: EvalConfig) -> list[np.ndarray]:
    """Out-of-fold MLP predictions of several targets on the same features; the folds of
    targets with about as many labelled rows are trained as one batch of networks (bigger
    batched products, one loop).

    Each job's networks get the masks and seeds :func:`mlp_cv` gives them alone.
    """
    # Networks in one batch take equal steps, so one with fewer rows repeats a few each
    # epoch: fine for a few, not for a target labelled on far fewer regions than another.
    order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
    groups: list[list[int]] = []
    for j in order:
        if groups and len(jobs[j][1]) <= 1.05 * len(jobs[groups[-1][0]][1]):
            groups[-1].append(j)
        else:
            groups.append([j])
    out: dict[int, np.ndarray] = {}
    for group in groups:
        out.update(zip(group, _mlp_cv_batch(x, [jobs[j] for j in group], cfg), strict=True))
    return [out[j] for j in range(len(jobs))]


def _mlp_cv_batch(x: np.ndarray, jobs: list[CVJob], cfg: EvalConfig) -> list[np.ndarray]:
    n = x.shape[0]
    trains: list[np.ndarray] = []
    stops: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    keys: list[int] = []
    for rows, y, folds in jobs:
        tr, st = holdout_masks(len(y), folds, cfg.seed)
        full_tr = np.zeros((len(folds), n), dtype=bool)
        full_st = np.zeros((len(folds), n), dtype=bool)
        full_tr[:, rows], full_st[:, rows] = tr, st
        target = np.zeros(n)  # rows without this target are in no mask: never read
        target[rows] = y
        trains.append(full_tr)
        stops.append(full_st)
        ys.append(np.broadcast_to(target, (len(folds), n)))
        keys.extend(range(len(folds)))
    fit = train_mlps(
        x, np.concatenate(ys), np.concatenate(trains), np.concatenate(stops), cfg, keys
    )
    pred = fit.predict(x)
    out, first = [], 0
    for rows, y, folds in jobs:
        p = np.empty(len(y))
        for k, test in enumerate(folds):
            p[test] = pred[first + k, rows[test]]
        out.append(p)
        first += len(folds)
    return out


def mlp_cv(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray], cfg: EvalConfig) -> np.ndarray:
    """Out-of-fold MLP predictions: each fold's MLP trains on the other folds."""
    return mlp_cv_many(x, [(np.arange(len(y)), y, folds)], cfg)[0]


def ridge_cv(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    """Out-of-fold ridge predictions; each fold picks its penalty by leave-one-out on its
    training part (nested, so the test fold never chooses it)."""
    out = np.empty(len(y))
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        w, b, _ = ridge_fit_auto(x[train], y[train])
        out[test] = x[test] @ w + b
    return out


def score(
    x: np.ndarray, y: np.ndarray, cfg: EvalConfig, heads: tuple[str, ...] = HEADS
) -> dict[str, dict[str, float]]:
    """Per head: mean R² and its standard deviation over folds, RMSE and MAPE."""
    folds = kfold_indices(len(y), cfg.folds, cfg.seed)
    cv = {"mlp": lambda: mlp_cv(x, y, folds, cfg), "ridge": lambda: ridge_cv(x, y, folds)}
    # only the heads asked for: the MLP is most of the time
    return {head: fold_summary(y, cv[head](), folds) for head in heads}


def fold_summary(y: np.ndarray, pred: np.ndarray, folds: list[np.ndarray]) -> dict[str, float]:
    """Mean R² over the folds and its standard deviation, mean RMSE and MAPE."""
    per_fold = np.array([metrics(y[t], pred[t]) for t in folds])
    return {
        "r2": float(per_fold[:, 0].mean()),
        "r2_std": float(per_fold[:, 0].std()),
        "rmse": float(per_fold[:, 1].mean()),
        "mape": float(np.nanmean(per_fold[:, 2])),
    }
