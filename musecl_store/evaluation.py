"""The paper's evaluation table: how well each embedding predicts each indicator.

Rows (``EMBEDDINGS``): ``counts`` (a classical baseline without learning: log POI-category
counts and log in/out trip counts), ``remote``, ``street``, ``poi``, ``concat``
(remote|street|poi), ``add`` (remote+street) and ``fused`` (MuseCL). For every indicator,
each is scored by 5-fold cross-validation with the paper's MLP head (512-256-128-64) and
with ridge regression: R², RMSE and MAPE, mean and spread over the folds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store.embeddings import load_embeddings
from musecl_store.errors import MuseclError
from musecl_store.regression import kfold_indices, r2_score, ridge_fit_auto
from musecl_store.summary import get_city
from musecl_store.tables import Indicator, Mobility, ModelVersion, Poi, Region

EMBEDDINGS = ("counts", "remote", "street", "poi", "concat", "add", "fused")
HEADS = ("mlp", "ridge")
MLP_LAYERS = (512, 256, 128, 64)


class EvaluationError(MuseclError, LookupError):
    """Nothing to evaluate: an unknown indicator or model version."""


@dataclass(frozen=True)
class EvalConfig:
    folds: int = 5
    seed: int = 0
    log_target: bool = False
    mlp_epochs: int = 200
    mlp_lr: float = 1e-3
    mlp_weight_decay: float = 1e-4
    mlp_patience: int = 20


def metrics(y: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """R², RMSE and MAPE (in %, over targets that are not 0)."""
    rmse = float(np.sqrt(np.mean((y - pred) ** 2)))
    nz = y != 0
    mape = float(np.mean(np.abs((y[nz] - pred[nz]) / y[nz])) * 100) if nz.any() else float("nan")
    return r2_score(y, pred), rmse, mape


class _FoldMLPs(torch.nn.Module):
    """One MLP per fold, trained together as a batch of networks (same data, own masks)."""

    def __init__(self, folds: int, d_in: int, gen: torch.Generator):
        super().__init__()
        sizes = (d_in, *MLP_LAYERS, 1)
        self.w = torch.nn.ParameterList()
        self.b = torch.nn.ParameterList()
        for a, b in itertools.pairwise(sizes):
            bound = (6.0 / (a + b)) ** 0.5
            self.w.append(
                torch.nn.Parameter((torch.rand(folds, a, b, generator=gen) * 2 - 1) * bound)
            )
            self.b.append(torch.nn.Parameter(torch.zeros(folds, 1, b)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (F, N, d) -> (F, N)
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.w) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)


@dataclass
class MLPFit:
    """MLPs trained side by side (one per mask row), at their best early-stopping epoch."""

    weights: list[np.ndarray]  # per layer (F, in, out)
    biases: list[np.ndarray]  # per layer (F, 1, out)
    mu: np.ndarray  # (F, d) feature means and stds of each one's training rows
    sd: np.ndarray
    ymu: np.ndarray  # (F,) target mean and std
    ysd: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(F, N) predictions in target units."""
        h = (x[None, :, :] - self.mu[:, None, :]) / self.sd[:, None, :]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0)
        return h[..., 0] * self.ysd[:, None] + self.ymu[:, None]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"mu": self.mu, "sd": self.sd, "ymu": self.ymu, "ysd": self.ysd}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            out[f"w{i}"], out[f"b{i}"] = w, b
        return out

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> MLPFit:
        n = sum(1 for k in a if k.startswith("w"))
        return cls(
            [a[f"w{i}"] for i in range(n)],
            [a[f"b{i}"] for i in range(n)],
            a["mu"],
            a["sd"],
            a["ymu"],
            a["ysd"],
        )


def train_mlps(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, stop: np.ndarray, cfg: EvalConfig
) -> MLPFit:
    """Train one MLP head per row of the (F, N) ``train`` mask, early-stopped on ``stop``.

    Features and target are standardised with each MLP's own training rows.
    """
    f = train.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    tr, st = torch.from_numpy(train).float(), torch.from_numpy(stop).float()
    mu = (tr @ xt) / tr.sum(1, keepdim=True)
    sd = ((tr @ xt**2) / tr.sum(1, keepdim=True) - mu**2).clamp(min=1e-12).sqrt()
    ymu = (tr * yt).sum(1) / tr.sum(1)
    ysd = (((tr * (yt - ymu[:, None]) ** 2).sum(1) / tr.sum(1)).clamp(min=1e-12)).sqrt()
    xs = (xt.unsqueeze(0) - mu.unsqueeze(1)) / sd.unsqueeze(1)  # (F, N, d)
    ys = (yt.unsqueeze(0) - ymu[:, None]) / ysd[:, None]
    model = _FoldMLPs(f, x.shape[1], gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.mlp_lr, weight_decay=cfg.mlp_weight_decay)
    best = torch.full((f,), float("inf"))
    best_params = [p.detach().clone() for p in model.parameters()]
    bad = torch.zeros(f)
    for _ in range(cfg.mlp_epochs):
        loss = (((model(xs) - ys) ** 2) * tr).sum(1) / tr.sum(1)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            val = (((model(xs) - ys) ** 2) * st).sum(1) / st.sum(1)
            better = val < best - 1e-6
            best = torch.where(better, val, best)
            for keep, p in zip(best_params, model.parameters(), strict=True):
                keep[better] = p[better]
            bad = torch.where(better, torch.zeros_like(bad), bad + 1)
            if bool((bad >= cfg.mlp_patience).all()):
                break
    n_layers = len(model.w)
    ws = [p.numpy() for p in best_params[:n_layers]]
    bs = [p.numpy() for p in best_params[n_layers:]]
    return MLPFit(ws, bs, mu.numpy(), sd.numpy(), ymu.numpy(), ysd.numpy())


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


def mlp_cv(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray], cfg: EvalConfig) -> np.ndarray:
    """Out-of-fold MLP predictions: each fold's MLP trains on the other folds."""
    train, stop = holdout_masks(len(y), folds, cfg.seed)
    pred = train_mlps(x, y, train, stop, cfg).predict(x)
    out = np.empty(len(y))
    for k, test in enumerate(folds):
        out[test] = pred[k, test]
    return out


def ridge_cv(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    """Out-of-fold ridge predictions; each fold picks its penalty by leave-one-out on its
    training part (nested, so the test fold never chooses it)."""
    out = np.empty(len(y))
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        w, b, _ = ridge_fit_auto(x[train], y[train])
        out[test] = x[test] @ w + b
    return out


def score(x: np.ndarray, y: np.ndarray, cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """Per head: mean R² and its standard deviation over folds, RMSE and MAPE."""
    folds = kfold_indices(len(y), cfg.folds, cfg.seed)
    preds = {"mlp": mlp_cv(x, y, folds, cfg), "ridge": ridge_cv(x, y, folds)}
    out = {}
    for head, pred in preds.items():
        per_fold = np.array([metrics(y[t], pred[t]) for t in folds])
        out[head] = {
            "r2": float(per_fold[:, 0].mean()),
            "r2_std": float(per_fold[:, 0].std()),
            "rmse": float(per_fold[:, 1].mean()),
            "mape": float(np.nanmean(per_fold[:, 2])),
        }
    return out


def feature_sets(
    session: Session, city_id: int, model_version_id: int
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Region ids and the feature matrix of every row of the table."""
    vecs: dict[str, np.ndarray] = {}
    ids: list[str] = []
    for kind in ("remote", "street", "poi", "fused"):
        ids_k, mat = load_embeddings(session, model_version_id, kind, city_id)
        if ids and ids_k != ids:  # pragma: no cover - written together by training
            raise EvaluationError(f"model version {model_version_id} has ragged embeddings")
        ids, vecs[kind] = ids_k, mat
    if not ids:
        raise EvaluationError(f"model version {model_version_id} has no embeddings for this city")
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
    vecs["counts"] = np.log1p(counts)
    vecs["concat"] = np.concatenate([vecs["remote"], vecs["street"], vecs["poi"]], axis=1)
    vecs["add"] = vecs["remote"] + vecs["street"]
    return ids, vecs


def model_version_for(session: Session, city_id: int, version: int | None) -> ModelVersion:
    if version is None:
        mv = session.scalar(
            select(ModelVersion).where(
                ModelVersion.city_id == city_id, ModelVersion.active.is_(True)
            )
        )
        if mv is None:
            raise EvaluationError("this city has no trained model yet; run `musecl train` first")
        return mv
    mv = session.get(ModelVersion, version)
    if mv is None or mv.city_id != city_id:
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
) -> list[dict[str, Any]]:
    """Score every embedding on every indicator; saves the records in the model's metrics.

    Returns:
        records ``{"indicator", "embedding", "head", "r2", "r2_std", "rmse", "mape", "n"}``.

    Raises:
        EvaluationError: an unknown indicator, or no trained model.
    """
    cfg = cfg or EvalConfig()
    c = get_city(session, city)
    mv = model_version_for(session, c.id, model_version)
    ids, feats = feature_sets(session, c.id, mv.id)
    values = session.execute(
        select(Indicator.name, Region.region_id, Indicator.value)
        .join(Region, Region.id == Indicator.region_pk)
        .where(Region.city_id == c.id)
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
    records: list[dict[str, Any]] = []
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
        for emb in EMBEDDINGS:
            for head, m in score(feats[emb][rows], y, cfg).items():
                records.append(
                    {
                        "indicator": name,
                        "embedding": emb,
                        "head": head,
                        "r2": round(m["r2"], 4),
                        "r2_std": round(m["r2_std"], 4),
                        "rmse": round(m["rmse"], 4),
                        "mape": round(m["mape"], 2),
                        "n": len(y),
                    }
                )
    if save:
        mv.metrics = {
            **(mv.metrics or {}),
            "evaluation": {"log_target": cfg.log_target, "folds": cfg.folds, "records": records},
        }
    return records


def markdown_table(records: list[dict[str, Any]]) -> str:
    """Rows = embeddings, one column per (indicator, head): R² ± std."""
    inds = list(dict.fromkeys(r["indicator"] for r in records))
    cols = [(i, h) for i in inds for h in HEADS]
    by = {(r["embedding"], r["indicator"], r["head"]): r for r in records}
    lines = [
        "| embedding | " + " | ".join(f"{i} ({h})" for i, h in cols) + " | mean R² (mlp) |",
        "| --- |" + " --- |" * (len(cols) + 1),
    ]
    for emb in EMBEDDINGS:
        cells = []
        for i, h in cols:
            r = by.get((emb, i, h))
            cells.append(f"{r['r2']:.3f} ± {r['r2_std']:.3f}" if r else "")
        mean = np.mean([by[(emb, i, "mlp")]["r2"] for i in inds if (emb, i, "mlp") in by])
        lines.append(f"| {emb} | " + " | ".join(cells) + f" | {mean:.3f} |")
    return "\n".join(lines)
