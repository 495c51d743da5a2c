"""Small, dependency-free regression metrics: closed-form ridge with k-fold cross-validation."""

from __future__ import annotations

import numpy as np


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination, 1 - SS_res / SS_tot."""
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0


def kfold_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint test folds covering ``range(n)``, shuffled with ``seed``."""
    if not 2 <= k <= n:
        raise ValueError(f"k-fold needs 2 <= k <= n (k={k}, n={n})")
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge on standardised features; returns (weights on raw features, intercept)."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    z = (x - mu) / sd
    ym = y.mean()
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - ym))
    w_raw = w / sd
    return w_raw, float(ym - mu @ w_raw)


def ridge_cv_r2(
    x: np.ndarray, y: np.ndarray, *, k: int = 5, alpha: float = 1.0, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of out-of-fold R² of a ridge regression."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    scores = []
    for test in kfold_indices(len(y), k, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        w, b = ridge_fit(x[train], y[train], alpha)
        scores.append(r2_score(y[test], x[test] @ w + b))
    return float(np.mean(scores)), float(np.std(scores))


RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def ridge_fit_auto(
    x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = RIDGE_ALPHAS
) -> tuple[np.ndarray, float, float]:
    """Ridge whose penalty is picked by exact leave-one-out error on the training data.

    Returns:
        (weights on raw features, intercept, the chosen alpha).
    """
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    z = (x - mu) / sd
    ym = y.mean()
    yc = y - ym
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    uty = u.T @ yc
    best, best_err = alphas[0], np.inf
    for a in alphas:
        shrink = s**2 / (s**2 + a)
        fitted = u @ (shrink * uty)
        h = (u**2) @ shrink + 1.0 / len(y)  # leverage, the intercept included
        err = float(np.mean(((yc - fitted) / np.clip(1 - h, 1e-6, None)) ** 2))
        if err < best_err:
            best, best_err = a, err
    w, b = ridge_fit(x, y, best)
    return w, b, best
