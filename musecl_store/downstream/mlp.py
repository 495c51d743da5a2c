"""The paper's MLP head (512-256-128-64, mini-batch Adam, early stopping), trained for
many folds and targets at once as one batched network, and its settings."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MLP_LAYERS = (512, 256, 128, 64)


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
    with torch_threads(cfg.mlp_threads):
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


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside, and back after (None: untouched)."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
