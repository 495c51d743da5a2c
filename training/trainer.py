"""The MuseCL training run: similarities -> triplets -> image encoders -> fusion -> store.

Stages run in order (``remote``, ``street``, ``fusion``); after every epoch the run's state
is checkpointed under ``checkpoint_dir/<city>/<run id>/state.pt``, so an interrupted run
resumes where it stopped. Each epoch draws its samples from a generator seeded by
(seed, stage, epoch): a resumed run gives the same result as an uninterrupted one, and the
same inputs and seed give the same embeddings on the CPU.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import update
from sqlalchemy.orm import Session

import musecl_store
from musecl_store.bundle import digest
from musecl_store.embed import (
    CityData,
    embed_regions,
    load_city_data,
    poi_text_means,
    visual_means,
    write_region_embeddings,
)
from musecl_store.errors import MuseclError
from musecl_store.nn.fusion import VISUAL
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.resnet import ImageEncoder, load_backbone
from musecl_store.nn.text import TextEncoder
from musecl_store.progress import progress
from musecl_store.tables import ModelVersion, Revision, TextEmbedding
from training import similarity
from training.config import TrainConfig
from training.losses import info_nce, triplet_loss
from training.sampler import TripletSampler

STAGES = (*VISUAL, "fusion")


class TrainingError(MuseclError, ValueError):
    """The city cannot be trained on as it is (the message says why and what to do)."""


@dataclass
class TrainResult:
    model_version_id: int
    revision: int
    run_dir: Path
    checkpoint: Path
    history: dict[str, list[dict[str, float]]]
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


def check_city(data: CityData, config: TrainConfig) -> np.ndarray:
    """Refuse a city MuseCL cannot learn from; returns the mask of regions to embed."""
    if len(data.poi_sentence) == 0:
        raise TrainingError(
            f"city {data.city.name!r} has no POIs: MuseCL needs POI texts for the fusion and POI "
            "mixes for the similarities; add pois.csv rows and re-ingest"
        )
    if sum(len(data.images[m].paths) for m in VISUAL) == 0:
        raise TrainingError(f"city {data.city.name!r} has no images; add images.csv and re-ingest")
    has_image = np.zeros(data.n, dtype=bool)
    for m in VISUAL:
        has_image[data.images[m].region] = True
    if not has_image.all():
        missing = [data.region_ids[i] for i in np.flatnonzero(~has_image)]
        if not config.skip_regions_without_images:
            raise TrainingError(
                f"{len(missing)} region(s) have no images at all (e.g. {', '.join(missing[:5])}): "
                "the fused embedding needs a remote tile or a street view; add images or set "
                '"skip_regions_without_images": true in the config to leave them unembedded'
            )
    return has_image


class Checkpoint:
    """The resumable state of a run: the stage, epoch, weights and optimiser."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "state.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def _augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Random 90-degree rotations for remote tiles, horizontal flips for street views."""
    if kind == "remote":
        k = torch.randint(0, 4, (x.shape[0],), generator=gen)
        return torch.stack(
            [torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k, strict=True)]
        )
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class Trainer:
    """One training run for one city (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        city: str,
        config: TrainConfig,
        *,
        resume: bool = True,
        show_progress: bool | None = None,
        log: Callable[[str], None] = print,
    ):
        self.session, self.config, self.log, self.show = session, config, log, show_progress
        self.data = load_city_data(session, city)
        self.has_image = check_city(self.data, config)
        run_id = digest(json.dumps(config.to_dict(), sort_keys=True), self.data.city.revision)[:12]
        self.run_dir = Path(config.checkpoint_dir) / self.data.city.name / run_id
        self.ckpt = Checkpoint(self.run_dir)
        self.state = self.ckpt.load() if resume else None
        self.text_encoder = TextEncoder(config.text_model)
        text_dim = self.text_encoder.dim
        torch.manual_seed(config.seed)
        self.net = MuseclNet(config.dim, text_dim)
        if self.state is not None:
            self.net.load_state_dict(self.state["net"])
            self.log(
                f"resuming {self.run_dir} at stage {self.state['stage']}, "
                f"epoch {self.state['epoch'] + 1}"
            )
        else:
            for m, path in config.pretrained.items():
                if path:
                    encoder = self.net.encoders[m]
                    assert isinstance(encoder, ImageEncoder)
                    load_backbone(encoder, path)
        self.history: dict[str, list[dict[str, float]]] = (
            self.state["history"] if self.state else {s: [] for s in STAGES}
        )
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(self.data.n)
        n_val = round(config.val_fraction * self.data.n)
        self.val_regions = np.sort(order[:n_val])
        self.train_regions = np.sort(order[n_val:])
        self.pending_text: list[TextEmbedding] = []

    # -------------------------------------------------------------------- similarities

    def neighbours(self, which: str) -> np.ndarray:
        d, k = self.data, self.config.top_k
        if which == "poi":
            cats = sorted(set(d.poi_category))
            code = {c: i for i, c in enumerate(cats)}
            prof = similarity.poi_profiles(
                d.n, d.poi_region, [code[c] for c in d.poi_category], len(cats)
            )
        else:
            prof = similarity.mobility_profiles(d.inflow, d.outflow, d.od, self.config.mobility_od)
        idx, _ = similarity.cosine_topk(prof, k)
        return idx

    # -------------------------------------------------------------------- stages

    def _done(self, stage: str) -> bool:
        if self.state is None:
            return False
        return (
            STAGES.index(stage) < STAGES.index(self.state["stage"]) or self.state["stage"] == "done"
        )

    def _start_epoch(self, stage: str) -> int:
        if self.state is not None and self.state["stage"] == stage:
            return int(self.state["epoch"]) + 1
        return 0

    def _early_stop(
        self,
        stage: str,
        epoch: int,
        val: float,
        module: torch.nn.Module,
        opt: torch.optim.Optimizer,
        patience: int,
    ) -> bool:
        """Track the best weights; checkpoint; True when it is time to stop."""
        st = self.state if self.state and self.state["stage"] == stage else None
        best = st["best_loss"] if st else float("inf")
        best_state = st["best_state"] if st else None
        bad = st["bad_epochs"] if st else 0
        if val < best - 1e-6:
            best, bad = val, 0
            best_state = {k: v.clone() for k, v in module.state_dict().items()}
        else:
            bad += 1
        self.state = {
            "stage": stage,
            "epoch": epoch,
            "net": self.net.state_dict(),
            "opt": opt.state_dict(),
            "best_loss": best,
            "best_state": best_state,
            "bad_epochs": bad,
            "history": self.history,
        }
        self.ckpt.save(self.state)
        return bad >= patience

    def _finish_stage(self, stage: str, module: torch.nn.Module) -> None:
        if self.state and self.state.get("best_state") is not None:
            module.load_state_dict(self.state["best_state"])
        nxt = STAGES[STAGES.index(stage) + 1] if stage != "fusion" else "done"
        self.state = {
            "stage": nxt,
            "epoch": -1,
            "net": self.net.state_dict(),
            "opt": None,
            "best_loss": float("inf"),
            "best_state": None,
            "bad_epochs": 0,
            "history": self.history,
        }
        self.ckpt.save(self.state)

    def train_images(self, kind: str) -> None:
        cfg, data = self.config, self.data
        if self._done(kind):
            return
        encoder = self.net.encoders[kind]
        if not data.images[kind].paths:
            self.log(f"{kind}: no images in this city; the modality is left out")
            self._finish_stage(kind, encoder)
            return
        pix = data.pixels(kind, cfg.image_size, self.show)
        sampler = TripletSampler(self.neighbours(cfg.similarity[kind]), data.images_of(kind))
        train_anchors = sampler.anchors(self.train_regions)
        val_anchors = sampler.anchors(self.val_regions)
        if len(train_anchors) == 0:
            self.log(
                f"{kind}: no region has both images and a similar region with images; "
                "the encoder keeps its initial weights"
            )
            self._finish_stage(kind, encoder)
            return
        # Several fixed triplets per validation anchor: a steadier signal for early stopping.
        val_triplets = sampler.sample(
            np.repeat(val_anchors, cfg.val_triplets_per_anchor),
            np.random.default_rng([cfg.seed, 99, 0]),
        )
        opt = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if self.state and self.state["stage"] == kind and self.state["opt"]:
            opt.load_state_dict(self.state["opt"])
        s = STAGES.index(kind)
        for epoch in range(self._start_epoch(kind), cfg.epochs):
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, s, epoch])
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s * 1009 + epoch)
            triplets = sampler.sample(rng.permutation(train_anchors), rng)
            encoder.train()
            losses = []
            batches = range(0, len(triplets), cfg.batch_size)
            for b in progress(
                batches,
                desc=f"{kind} epoch {epoch + 1}/{cfg.epochs}",
                enabled=self.show,
                unit="batch",
            ):
                tri = torch.from_numpy(triplets[b : b + cfg.batch_size])
                x = _augment(pix[tri.reshape(-1)].float() / 255.0, kind, gen)
                out = encoder(x).view(len(tri), 3, -1)
                loss = triplet_loss(out[:, 0], out[:, 1], out[:, 2], cfg.margin)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            train_loss = float(np.mean(losses))
            val_loss = (
                self._val_triplet_loss(encoder, pix, val_triplets)
                if len(val_triplets)
                else train_loss
            )
            self.history[kind].append(
                {
                    "epoch": epoch + 1,
                    "train": round(train_loss, 5),
                    "val": round(val_loss, 5),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            self.log(
                f"{kind} epoch {epoch + 1}: triplet loss train {train_loss:.4f}, val {val_loss:.4f}"
            )
            if self._early_stop(kind, epoch, val_loss, encoder, opt, cfg.patience):
                self.log(f"{kind}: no better validation loss for {cfg.patience} epochs; stopping")
                break
        self._finish_stage(kind, encoder)

    @torch.no_grad()
    def _val_triplet_loss(
        self, encoder: torch.nn.Module, pix: torch.Tensor, tri: np.ndarray
    ) -> float:
        encoder.eval()
        out = torch.cat(
            [
                encoder(pix[torch.from_numpy(tri[b : b + 128]).reshape(-1)].float() / 255.0)
                for b in range(0, len(tri), 128)
            ]
        )
        out = out.view(len(tri), 3, -1)
        return float(triplet_loss(out[:, 0], out[:, 1], out[:, 2], self.config.margin))

    def train_fusion(
        self, visual: dict[str, tuple[np.ndarray, np.ndarray]], text: tuple[np.ndarray, np.ndarray]
    ) -> None:
        cfg = self.config
        fusion = self.net.fusion
        if self._done("fusion"):
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
        if self.state and self.state["stage"] == "fusion" and self.state["opt"]:
            opt.load_state_dict(self.state["opt"])

        def loss_on(idx: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
            m = mask_t[idx]
            if gen is not None and cfg.modality_dropout > 0:  # hide one of two modalities
                both = m.all(dim=1)
                hide = both & (torch.rand(len(idx), generator=gen) < cfg.modality_dropout)
                which = torch.randint(0, m.shape[1], (len(idx),), generator=gen)
                m = m.clone()
                m[hide, which[hide]] = False
            fused, _ = fusion(emb[idx], m)
            return info_nce(fused, fusion.text(text_t[idx]), cfg.temperature)

        s = STAGES.index("fusion")
        for epoch in range(self._start_epoch("fusion"), cfg.fusion_epochs):
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
            self.history["fusion"].append(
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
            if self._early_stop("fusion", epoch, val_loss, fusion, opt, cfg.fusion_patience):
                best = self.state["best_loss"] if self.state else val_loss
                self.log(f"fusion: stopped at epoch {epoch + 1} (best val InfoNCE {best:.4f})")
                break
        self._finish_stage("fusion", fusion)

    # -------------------------------------------------------------------- the whole run

    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        cfg = self.config
        text = poi_text_means(
            self.session,
            self.data,
            self.text_encoder,
            cfg.text_batch_size,
            self.show,
            self.pending_text,
        )
        for kind in VISUAL:
            self.train_images(kind)
        visual = visual_means(self.data, self.net, cfg.image_size, self.show)
        self.train_fusion(visual, text)
        result = embed_regions(visual, text, self.net, learn_imputation=True)
        checkpoint = self.net.save(
            self.run_dir / "model.pt",
            {**cfg.to_dict(), "text_dim": self.text_encoder.dim, "city": self.data.city.name},
        )
        return self._write(result, checkpoint, time.perf_counter() - t0)

    def _write(self, result: Any, checkpoint: Path, seconds: float) -> TrainResult:
        s, data, cfg = self.session, self.data, self.config
        s.add_all(self.pending_text)
        keep = self.has_image
        if not keep.all():  # skip_regions_without_images: leave them out
            self.log(f"{int((~keep).sum())} region(s) without images are left unembedded")
            data = data.only_regions(keep)
            result.vectors = {k: v[keep] for k, v in result.vectors.items()}
            result.imputed = {k: v[keep] for k, v in result.imputed.items()}
            result.alpha = result.alpha[keep]
        rev = Revision(operation="train", city_id=data.city.id)
        s.add(rev)
        s.flush()
        metrics = {
            "history": self.history,
            "seconds": round(seconds, 1),
            "imputed": {k: int(v.sum()) for k, v in result.imputed.items()},
            "mean_attention": {
                m: round(float(result.alpha[:, i].mean()), 4) for i, m in enumerate(VISUAL)
            },
        }
        s.execute(
            update(ModelVersion).where(ModelVersion.city_id == data.city.id).values(active=False)
        )
        mv = ModelVersion(
            city_id=data.city.id,
            config=cfg.to_dict(),
            seed=cfg.seed,
            data_revision=data.city.revision,
            library_versions=library_versions(),
            metrics=metrics,
            checkpoint_path=str(checkpoint.resolve()),
            active=True,
        )
        s.add(mv)
        s.flush()
        counts = write_region_embeddings(s, data, mv.id, result, rev.id)
        rev.summary = {"model_version": mv.id, "embeddings": counts}
        s.flush()
        return TrainResult(mv.id, rev.id, self.run_dir, checkpoint, self.history, counts, seconds)


def train_city(
    session: Session,
    city: str,
    config: TrainConfig,
    *,
    resume: bool = True,
    show_progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train MuseCL on a city in the store and write a new, active model version with the
    embeddings of every region. The caller commits."""
    return Trainer(session, city, config, resume=resume, show_progress=show_progress, log=log).run()
