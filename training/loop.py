"""The training loop of each stage: the image encoders (one per visual modality), the
paper's visual fusion, the all-branch fusion. Every epoch draws its samples from a generator
seeded by (seed, stage, epoch), so a resumed run gives what an uninterrupted one does; after
every epoch the run's state is checkpointed (:class:`training.checkpoint.RunState`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from musecl_store.embedding.images import Pixels
from musecl_store.embedding.inputs import CityData, RegionInputs
from musecl_store.nn.fusion import VISUAL, AttentiveFusion, ModalityFusion
from musecl_store.nn.model import MuseclNet
from musecl_store.progress import progress
from training.checkpoint import STAGES, RunState
from training.config import TrainConfig
from training.data import TrainingError, positives
from training.device import autocast
from training.distributed import Parallel
from training.losses import info_nce, pair_info_nce, triplet_loss
from training.sampler import TripletSampler


def _augment(
    x: torch.Tensor, kind: str, gen: torch.Generator, rows: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """Random 90-degree rotations for remote tiles, horizontal flips for street views.

    The draws come from the CPU generator ``gen`` whatever ``x``'s device, so they do not
    depend on it. ``rows`` = (lo, hi, total): ``x`` is rows lo..hi of a global batch of
    ``total`` images (one rank's slice); the draws are those of the whole batch, so the
    slices of all ranks get the draws one process would.
    """
    lo, hi, total = rows or (0, x.shape[0], x.shape[0])
    if kind == "remote":
        k = torch.randint(0, 4, (total,), generator=gen)[lo:hi]
        if not len(x):
            return x
        return torch.stack(
            [torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k, strict=True)]
        )
    flip = (torch.rand(total, generator=gen) < 0.5)[lo:hi]
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


class _VisualStep(nn.Module):
    """The visual-fusion stage's forward in one call: fused image vector and projected text
    (DistributedDataParallel averages the gradients of what its forward uses)."""

    def __init__(self, fusion: AttentiveFusion):
        super().__init__()
        self.fusion = fusion

    def forward(
        self, emb: torch.Tensor, mask: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fused, _ = self.fusion(emb, mask)
        return fused, self.fusion.text(text)


class _PairStep(nn.Module):
    """The all-branch fusion stage's forward in one call: the fused vectors of the anchors
    and of their positives."""

    def __init__(self, fusion: ModalityFusion):
        super().__init__()
        self.fusion = fusion

    def forward(
        self,
        xa: list[torch.Tensor],
        ma: torch.Tensor,
        xb: list[torch.Tensor],
        mb: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fa, _ = self.fusion(xa, ma)
        fb, _ = self.fusion(xb, mb)
        return fa, fb


class TrainingLoop:
    """The stages' loops over the state a run holds (set by :class:`training.trainer.Trainer`,
    which reads the city and builds the network)."""

    config: TrainConfig
    data: CityData
    net: MuseclNet
    device: torch.device
    par: Parallel
    run: RunState
    log: Callable[[str], None]
    show: bool | None
    train_regions: np.ndarray
    val_regions: np.ndarray

    def _dev(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the training device (the same tensor on the CPU)."""
        return x.to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device)

    def positives(self, which: str) -> np.ndarray:
        return positives(which, self.data, self.config)

    def train_images(self, kind: str) -> None:
        """One image encoder: its region's images against those of similar regions
        (``similarity``), by in-batch InfoNCE over pairs or the paper's triplet loss."""
        cfg, data = self.config, self.data
        if self.run.done(kind):
            return
        encoder = self.net.encoders[kind]
        if not data.images[kind].paths:
            self.log(f"{kind}: no images in this city; the modality is left out")
            self.run.finish(kind, encoder, self.net)
            return
        pix = data.pixels(kind, cfg.image_size, self.show)
        sampler = TripletSampler(self.positives(cfg.similarity[kind]), data.images_of(kind))
        train_anchors = sampler.anchors(self.train_regions)
        val_anchors = sampler.anchors(self.val_regions)
        if len(train_anchors) == 0:
            self.log(
                f"{kind}: no region has both images and a similar region with images; "
                "the encoder keeps its initial weights"
            )
            self.run.finish(kind, encoder, self.net)
            return
        # Several fixed samples per validation anchor: a steadier signal for early stopping.
        val_items, val_regions = self._samples(
            sampler,
            np.repeat(val_anchors, cfg.val_triplets_per_anchor),
            np.random.default_rng([cfg.seed, 99, 0]),
        )
        opt = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.run.resume_optimiser(kind, opt)
        s = STAGES.index(kind)
        # Data-parallel: each rank encodes its slice of every batch (config.batch_size is the
        # global batch); the loss sees the whole batch; DDP averages the gradients.
        model = self.par.wrap(encoder, self.device)
        for epoch in range(self.run.start_epoch(kind), cfg.epochs):
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, s, epoch])
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s * 1009 + epoch)
            items, regions = self._samples(sampler, rng.permutation(train_anchors), rng)
            encoder.train()
            losses = []
            batches = range(0, len(items), cfg.batch_size)
            for b in progress(
                batches,
                desc=f"{kind} epoch {epoch + 1}/{cfg.epochs}",
                enabled=self.show,
                unit="batch",
            ):
                chunk = torch.from_numpy(items[b : b + cfg.batch_size])
                if len(chunk) < 2:
                    continue  # in-batch negatives need a batch
                mine, cols = self.par.shard(chunk), chunk.shape[1]
                lo, hi = self.par.bounds(len(chunk))
                x = self._dev(pix[mine.reshape(-1)]).float() / 255.0
                x = _augment(x, kind, gen, (lo * cols, hi * cols, len(chunk) * cols))
                with self.par.global_batch_norm(encoder), self._autocast():
                    out = model(x)
                out = self.par.gather(out.float().view(len(mine), cols, -1), len(chunk))
                loss = self._sample_loss(out, sampler, regions[b : b + cfg.batch_size])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            train_loss = float(np.mean(losses))
            val_loss = (
                self._val_loss(encoder, pix, sampler, val_items, val_regions)
                if len(val_items) >= 2
                else train_loss
            )
            self.run.history[kind].append(
                {
                    "epoch": epoch + 1,
                    "train": round(train_loss, 5),
                    "val": round(val_loss, 5),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            self.log(
                f"{kind} epoch {epoch + 1}: {cfg.image_loss} loss train {train_loss:.4f}, "
                f"val {val_loss:.4f}"
            )
            if self.run.early_stop(kind, epoch, val_loss, encoder, opt, cfg.patience, self.net):
                self.log(f"{kind}: no better validation loss for {cfg.patience} epochs; stopping")
                break
        self.run.finish(kind, encoder, self.net)

    def _samples(
        self, sampler: TripletSampler, anchors: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image index rows for the configured loss: triplets, or (anchor, positive) pairs
        with their regions (to keep known positives out of the in-batch negatives)."""
        if self.config.image_loss == "triplet":
            return sampler.sample(anchors, rng), np.zeros((len(anchors), 2), dtype=np.int64)
        return sampler.sample_pairs(anchors, rng, self.config.same_region)

    def _sample_loss(
        self, out: torch.Tensor, sampler: TripletSampler, regions: np.ndarray
    ) -> torch.Tensor:
        cfg = self.config
        if cfg.image_loss == "triplet":
            return triplet_loss(out[:, 0], out[:, 1], out[:, 2], cfg.margin)
        related = self._dev(torch.from_numpy(sampler.related(regions)))
        return pair_info_nce(out[:, 0], out[:, 1], cfg.image_temperature, related)

    @torch.no_grad()
    def _val_loss(
        self,
        encoder: torch.nn.Module,
        pix: Pixels,
        sampler: TripletSampler,
        items: np.ndarray,
        regions: np.ndarray,
    ) -> float:
        """The loss on fixed validation samples, in fixed batches (in-batch negatives)."""
        encoder.eval()
        size = self.config.batch_size
        losses = []
        for b in range(0, len(items), size):
            chunk = torch.from_numpy(items[b : b + size])
            if len(chunk) < 2:
                continue
            mine = self.par.shard(chunk)
            with self._autocast():
                out = encoder(self._dev(pix[mine.reshape(-1)]).float() / 255.0)
            out = self.par.gather(out.float().view(len(mine), chunk.shape[1], -1), len(chunk))
            losses.append(float(self._sample_loss(out, sampler, regions[b : b + size])))
        return self.par.agree(float(np.mean(losses)))

    def train_fusion(
        self, visual: dict[str, tuple[np.ndarray, np.ndarray]], text: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """The paper's visual fusion: in-batch InfoNCE between a region's fused image vector
        and its projected POI text."""
        cfg = self.config
        fusion = self.net.fusion_visual
        if self.run.done("fusion"):
            return
        mask = np.column_stack([visual[m][1] for m in VISUAL])
        emb = torch.from_numpy(np.stack([visual[m][0] for m in VISUAL], axis=1))
        mask_t = torch.from_numpy(mask)
        text_t = torch.from_numpy(text[0])
        usable = text[1] & mask.any(axis=1)
        train = torch.from_numpy(np.intersect1d(self.train_regions, np.flatnonzero(usable)))
        val = torch.from_numpy(np.intersect1d(self.val_regions, np.flatnonzero(usable)))
        if len(train) < 2:
            raise TrainingError(
                "fewer than two regions have both POIs and images; cannot train the fusion"
            )
        opt = torch.optim.Adam(
            fusion.parameters(), lr=cfg.fusion_lr, weight_decay=cfg.fusion_weight_decay
        )
        self.run.resume_optimiser("fusion", opt)

        step = self.par.wrap(_VisualStep(fusion), self.device)

        def loss_on(idx: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
            m = mask_t[idx]
            if gen is not None and cfg.modality_dropout > 0:  # hide one of two modalities
                both = m.all(dim=1)
                hide = both & (torch.rand(len(idx), generator=gen) < cfg.modality_dropout)
                which = torch.randint(0, m.shape[1], (len(idx),), generator=gen)
                m = m.clone()
                m[hide, which[hide]] = False
            mine, n = self.par.shard(idx), len(idx)
            with self._autocast():
                fused, text_d = step(
                    self._dev(emb[mine]), self._dev(self.par.shard(m)), self._dev(text_t[mine])
                )
            fused, text_d = self.par.gather(fused.float(), n), self.par.gather(text_d.float(), n)
            return info_nce(fused, text_d, cfg.temperature)

        s = STAGES.index("fusion")
        for epoch in range(self.run.start_epoch("fusion"), cfg.fusion_epochs):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s * 1009 + epoch)
            perm = train[torch.randperm(len(train), generator=gen)]
            fusion.train()
            losses = []
            for b in range(0, len(perm), cfg.fusion_batch_size):
                idx = perm[b : b + cfg.fusion_batch_size]
                if len(idx) < 2:
                    continue
                loss = loss_on(idx, gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            fusion.eval()
            with torch.no_grad():
                val_loss = float(loss_on(val)) if len(val) >= 2 else float(np.mean(losses))
            val_loss = self.par.agree(val_loss)
            self.run.history["fusion"].append(
                {
                    "epoch": epoch + 1,
                    "train": round(float(np.mean(losses)), 5),
                    "val": round(val_loss, 5),
                }
            )
            if (epoch + 1) % 10 == 0:
                self.log(
                    f"fusion epoch {epoch + 1}: InfoNCE train {np.mean(losses):.4f}, "
                    f"val {val_loss:.4f}"
                )
            if self.run.early_stop(
                "fusion", epoch, val_loss, fusion, opt, cfg.fusion_patience, self.net
            ):
                best = self.run.state["best_loss"] if self.run.state else val_loss
                self.log(f"fusion: stopped at epoch {epoch + 1} (best val InfoNCE {best:.4f})")
                break
        self.run.finish("fusion", fusion, self.net)

    def train_fused(self, inputs: RegionInputs) -> None:
        """The all-branch fusion: in-batch InfoNCE between a region's fused vector and that
        of one of its positives (``fused_positive``), the other regions as negatives."""
        cfg = self.config
        fusion = self.net.fusion
        assert fusion is not None
        if self.run.done("fused"):
            return
        xs_cpu, mask_cpu = inputs.fusion_inputs()
        if self.run.start_epoch("fused") == 0:
            fusion.set_normalisation(xs_cpu, mask_cpu)
        xs = [self._dev(x) for x in xs_cpu]
        mask = self._dev(mask_cpu)
        nb = self.positives(cfg.fused_positive)
        has = (nb >= 0).any(axis=1)
        train = np.intersect1d(self.train_regions, np.flatnonzero(has))
        val = np.intersect1d(self.val_regions, np.flatnonzero(has))
        if len(train) < 2:
            raise TrainingError("fewer than two regions have positives; cannot train the fusion")

        def pick(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            valid = nb[rows] >= 0
            k = (rng.random(valid.shape) * valid).argmax(axis=1)  # a random valid column
            return nb[rows, k]

        step = self.par.wrap(_PairStep(fusion), self.device)

        def loss_on(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
            n = len(a)
            ia = self._dev(torch.from_numpy(self.par.shard(a)))
            ib = self._dev(torch.from_numpy(self.par.shard(b)))
            with self._autocast():
                fa, fb = step([x[ia] for x in xs], mask[ia], [x[ib] for x in xs], mask[ib])
            fa, fb = self.par.gather(fa.float(), n), self.par.gather(fb.float(), n)
            return info_nce(fa, fb, cfg.fused_temperature)

        val_pos = pick(val, np.random.default_rng([cfg.seed, 98, 0]))
        opt = torch.optim.Adam(
            fusion.parameters(), lr=cfg.fused_lr, weight_decay=cfg.fused_weight_decay
        )
        self.run.resume_optimiser("fused", opt)
        s = STAGES.index("fused")
        bs = cfg.fused_batch_size
        for epoch in range(self.run.start_epoch("fused"), cfg.fused_epochs):
            rng = np.random.default_rng([cfg.seed, s, epoch])
            perm = rng.permutation(train)
            pos = pick(perm, rng)
            fusion.train()
            losses = []
            for b in range(0, len(perm), bs):
                if len(perm[b : b + bs]) < 2:
                    continue
                loss = loss_on(perm[b : b + bs], pos[b : b + bs])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            train_loss = float(np.mean(losses))
            fusion.eval()
            with torch.no_grad():
                parts = [
                    float(loss_on(val[b : b + bs], val_pos[b : b + bs]))
                    for b in range(0, len(val), bs)
                    if len(val[b : b + bs]) >= 2
                ]
            val_loss = self.par.agree(float(np.mean(parts)) if parts else train_loss)
            self.run.history["fused"].append(
                {"epoch": epoch + 1, "train": round(train_loss, 5), "val": round(val_loss, 5)}
            )
            if (epoch + 1) % 10 == 0:
                self.log(
                    f"fused epoch {epoch + 1}: InfoNCE train {train_loss:.4f}, val {val_loss:.4f}"
                )
            if self.run.early_stop(
                "fused", epoch, val_loss, fusion, opt, cfg.fused_patience, self.net
            ):
                self.log(f"fused: stopped at epoch {epoch + 1}")
                break
        self.run.finish("fused", fusion, self.net)
