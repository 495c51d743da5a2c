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

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store.downstream.ridge import kfold_indices, r2_score, ridge_fit_auto
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
HEADS = ("mlp", "ridge")
MLP_LAYERS = (512, 256, 128, 64)


class EvaluationError(MuseclError, LookupError):
    """Nothing to evaluate: an unknown indicator or model version."""


@dataclass(frozen=True)
class EvalConfig:
    """Cross-validation and MLP-head settings.

    The MLP ones were tuned on demo seed 0 only: dropout 0.2 raised the MLP's mean R² of
    every row (poi by 0.08, concat by 0.05); patience 15 scored within 0.01 of patience 20
    on every row at 80% of the time; lr 3e-4, weight decay 1e-2 and batches of 32 or 128
    gained nothing worth their time.
    """

    folds: int = 5
    seed: int = 0
    log_target: bool = False
    mlp_batch: int = 64  # rows per mini-batch and network
    mlp_max_epochs: int = 300
    mlp_lr: float = 1e-3
    mlp_weight_decay: float = 1e-4
    mlp_patience: int = 15  # epochs without a better held-out loss before a network stops
    mlp_dropout: float = 0.2
    # The batched products are small: on the shared 2-core machine a second thread made
    # `musecl evaluate` about twice as slow whenever another process ran (361 s against
    # 190 s), and with one thread the numbers do not depend on the machine's core count.
    # None leaves torch's setting.
    mlp_threads: int | None = 1
    workers: int = 2  # rows of the table scored at once, in threads


def metrics(y: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """R², RMSE and MAPE (in %, over targets that are not 0)."""
    rmse = float(np.sqrt(np.mean((y - pred) ** 2)))
    nz = y != 0
    mape = float(np.mean(np.abs((y[nz] - pred[nz]) / y[nz])) * 100) if nz.any() else float("nan")
    return r2_score(y, pred), rmse, mape


class _FoldMLPs(torch.nn.Module):
    """One MLP per fold (of one or several targets), trained together as a batch of networks
    (same features, own masks and targets).

    Every network draws its random numbers from its own generator, so each trains exactly
    as it would alone, whatever else is in the batch.
    """

    def __init__(self, d_in: int, gens: list[torch.Generator]):
        super().__init__()
        sizes = (d_in, *MLP_LAYERS, 1)
        self.w = torch.nn.ParameterList()
        self.b = torch.nn.ParameterList()
        for a, b in itertools.pairwise(sizes):
            bound = (6.0 / (a + b)) ** 0.5
            u = torch.stack([torch.rand(a, b, generator=g) for g in gens])
            self.w.append(torch.nn.Parameter((u * 2 - 1) * bound))
            self.b.append(torch.nn.Parameter(torch.zeros(len(gens), 1, b)))

    def forward(
        self, h: torch.Tensor, dropout: float = 0.0, gens: list[torch.Generator] | None = None
    ) -> torch.Tensor:  # (F, N, d) -> (F, N)
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.w) - 1:
                h = torch.relu(h)
                if dropout > 0 and gens:  # by hand: F.dropout takes no generator
                    u = torch.empty_like(h)
                    for k, g in enumerate(gens):
                        u[k].uniform_(generator=g)
                    h = h * (u >= dropout) / (1 - dropout)
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
    epochs: np.ndarray | None = None  # (F,) best epoch of each (1-based); not stored

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


def _padded(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, m) row indices, padded with row 0, and the (F, m) 0/1 weights of real entries."""
    m = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), m, dtype=torch.int64)
    wt = torch.zeros(len(rows), m)
    for k, r in enumerate(rows):
        idx[k, : len(r)] = torch.from_numpy(r)
        wt[k, : len(r)] = 1.0
    return idx, wt


def _epoch_order(rows: list[torch.Tensor], gens: list[torch.Generator]) -> torch.Tensor:
    """(F, m): each network's training rows in a fresh random order; a network with fewer
    than the most rows repeats a few (folds differ by a row or two) so all take equal steps."""
    m = max(len(r) for r in rows)
    out = []
    for r, g in zip(rows, gens, strict=True):
        perm = r[torch.randperm(len(r), generator=g)]
        out.append(torch.cat([perm, perm[: m - len(r)]]))
    return torch.stack(out)


def _keep_networks(
    model: _FoldMLPs, opt: torch.optim.Adam, keep: torch.Tensor, cfg: EvalConfig
) -> torch.optim.Adam:
    """Drop the networks that are done, weights and Adam state, so the rest train faster;
    returns the optimizer of what is left.

    The networks share nothing, so slicing every (F, ...) tensor along F leaves the others'
    training as it was.
    """
    old = list(model.parameters())
    with torch.no_grad():
        for plist in (model.w, model.b):
            for i, p in enumerate(plist):
                plist[i] = torch.nn.Parameter(p[keep].clone())
    new = list(model.parameters())
    new_opt = _adam(new, cfg)
    for p_old, p_new in zip(old, new, strict=True):
        new_opt.state[p_new] = {  # "step" is one scalar for all networks
            k: v[keep] if v.dim() > 0 else v.clone() for k, v in opt.state[p_old].items()
        }
    return new_opt


def _adam(params: list[torch.nn.Parameter], cfg: EvalConfig) -> torch.optim.Adam:
    """Adam with the fused CPU kernel (torch >= 2.4): with a few steps per epoch the update
    is a third of the time otherwise. Older torch gets the multi-tensor one."""
    kw: dict[str, Any] = {"lr": cfg.mlp_lr, "weight_decay": cfg.mlp_weight_decay}
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except RuntimeError:  # pragma: no cover - torch < 2.4 has no fused Adam on the CPU
        return torch.optim.Adam(params, foreach=True, **kw)


def train_mlps(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    stop: np.ndarray,
    cfg: EvalConfig,
    keys: list[int] | None = None,
) -> MLPFit:
    """Train one MLP head per row of the (F, N) ``train`` mask, early-stopped on ``stop``.

    Adam on shuffled mini-batches of ``cfg.mlp_batch`` rows; after every epoch each network
    is scored on its ``stop`` rows, keeps its best weights, and is done after
    ``cfg.mlp_patience`` epochs without improvement; networks that are done leave the batch.
    Features and target are standardised with each MLP's own training rows. Runs on
    ``cfg.mlp_threads`` torch threads (set back after).

    Args:
        y: (N,) targets, or (F, N): one target row per network (read only on its rows).
        keys: network k draws from a generator seeded by (``cfg.seed``, ``keys[k]``;
            default k): deterministic, and the same as trained alone.
    """
    with _torch_threads(cfg.mlp_threads):
        return _train_mlps(x, y, train, stop, cfg, keys)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside, and back after (None: untouched)."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _train_mlps(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    stop: np.ndarray,
    cfg: EvalConfig,
    keys: list[int] | None = None,
) -> MLPFit:
    f = train.shape[0]
    gens = [
        torch.Generator().manual_seed(
            int(np.random.SeedSequence([cfg.seed, key]).generate_state(1)[0])
        )
        for key in (keys if keys is not None else range(f))
    ]
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32).expand(f, x.shape[0])  # (F, N), no copy
    tr = torch.from_numpy(train).float()
    mu = (tr @ xt) / tr.sum(1, keepdim=True)
    sd = ((tr @ xt**2) / tr.sum(1, keepdim=True) - mu**2).clamp(min=1e-12).sqrt()
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))  # constant columns stay 0, not huge
    ymu = (tr * yt).sum(1) / tr.sum(1)
    ysd = (((tr * (yt - ymu[:, None]) ** 2).sum(1) / tr.sum(1)).clamp(min=1e-12)).sqrt()

    def batch(idx: torch.Tensor, nets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # rows idx (len(nets), b) standardised for each of the networks ``nets`` on the fly:
        # no (F, N, d) copy of the data
        xb = (xt[idx] - mu[nets, None, :]) / sd[nets, None, :]
        return xb, (yt[nets[:, None], idx] - ymu[nets, None]) / ysd[nets, None]

    rows = [torch.from_numpy(np.flatnonzero(t)) for t in train]
    # near-equal batches rather than a ragged last one of a few rows
    n_batches = max(1, round(max(len(r) for r in rows) / cfg.mlp_batch))
    stop_idx, stop_wt = _padded([np.flatnonzero(s) for s in stop])
    x_stop, y_stop = batch(stop_idx, torch.arange(f))
    model = _FoldMLPs(x.shape[1], gens)
    opt = _adam(list(model.parameters()), cfg)
    best = torch.full((f,), float("inf"))
    best_epoch = torch.zeros(f, dtype=torch.int64)
    best_params = [p.detach().clone() for p in model.parameters()]
    bad = torch.zeros(f, dtype=torch.int64)
    alive = torch.arange(f)  # the networks still training, as indices into the F
    for epoch in range(1, cfg.mlp_max_epochs + 1):
        live = alive.tolist()
        order = _epoch_order([rows[i] for i in live], [gens[i] for i in live])
        for idx in torch.tensor_split(order, n_batches, dim=1):
            xb, yb = batch(idx, alive)
            loss = ((model(xb, cfg.mlp_dropout, [gens[i] for i in live]) - yb) ** 2).mean(1)
            opt.zero_grad()
            loss.sum().backward()  # the networks share no weights: each gets its own gradient
            opt.step()
        with torch.no_grad():
            err = (model(x_stop[alive]) - y_stop[alive]) ** 2
            val = (err * stop_wt[alive]).sum(1) / stop_wt[alive].sum(1)
            better = val < best[alive] - 1e-6
            won = alive[better]
            best[won], best_epoch[won] = val[better], epoch
            for keep, p in zip(best_params, model.parameters(), strict=True):
                keep[won] = p[better]
            bad[alive] += 1
            bad[won] = 0
            done = bad[alive] >= cfg.mlp_patience
            if bool(done.all()):
                break
            if bool(done.any()):
                opt = _keep_networks(model, opt, ~done, cfg)
                alive = alive[~done]
    n_layers = len(model.w)
    ws = [p.numpy() for p in best_params[:n_layers]]
    bs = [p.numpy() for p in best_params[n_layers:]]
    return MLPFit(ws, bs, mu.numpy(), sd.numpy(), ymu.numpy(), ysd.numpy(), best_epoch.numpy())


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
    targets: dict[str, CVJob] = {}
    for name in wanted:  # every target checked before the long part starts
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
    with _torch_threads(cfg.mlp_threads), ThreadPoolExecutor(cfg.workers) as pool:
        futures = {pool.submit(score_row, emb): emb for emb in embs}
        done = as_completed(futures)
        for fut in progress(
            done, desc="evaluate", total=len(embs), unit="row", enabled=show_progress
        ):
            for name, by_head in fut.result().items():
                scores[name, futures[fut]] = by_head
    records: list[dict[str, Any]] = []
    for name in wanted:
        for emb in embs:
            for head, m in scores[name, emb].items():
                records.append(
                    {
                        "indicator": name,
                        "embedding": emb,
                        "head": head,
                        "r2": round(m["r2"], 4),
                        "r2_std": round(m["r2_std"], 4),
                        "rmse": round(m["rmse"], 4),
                        "mape": round(m["mape"], 2),
                        "n": len(targets[name][1]),
                    }
                )
    if save:
        mv.metrics = {
            **(mv.metrics or {}),
            "evaluation": {"log_target": cfg.log_target, "folds": cfg.folds, "records": records},
        }
    return records


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
