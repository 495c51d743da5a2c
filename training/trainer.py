"""The MuseCL training run: similarities -> triplets -> image encoders -> fusion -> store.

Stages run in order (``remote``, ``street``, ``fusion``); after every epoch the run's state
is checkpointed under ``checkpoint_dir/<city>/<run id>/state.pt``, so an interrupted run
resumes where it stopped and a finished one is reused. The run id hashes the config and the
city's content (not its name or revision number), so any store holding the same data shares
the run. Each epoch draws its samples from a generator seeded by (seed, stage, epoch): a
resumed run gives the same result as an uninterrupted one, and the same inputs and seed give
the same embeddings on the CPU.

:func:`train_city` reads the city in one short read-only session, trains outside any
transaction (other writers are never blocked), then writes the model version in one short
transaction.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from torch import nn

import musecl_store
from musecl_store import faults
from musecl_store.embedding.run import (
    CityData,
    Pixels,
    RegionEmbeddings,
    RegionInputs,
    count_inputs,
    embed_regions,
    load_city_data,
    poi_text_means,
    visual_means,
    write_region_embeddings,
)
from musecl_store.errors import MuseclError
from musecl_store.hashing import digest
from musecl_store.nn.fusion import VISUAL, AttentiveFusion, ModalityFusion
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.resnet import ImageEncoder, load_backbone
from musecl_store.nn.text import TextEncoder
from musecl_store.progress import progress
from musecl_store.store.chunks import rows_in
from musecl_store.store.engine import session_factory, transaction
from musecl_store.store.tables import City, ModelVersion, Region, Revision, TextEmbedding
from training import similarity
from training.config import TrainConfig
from training.distributed import Parallel
from training.losses import info_nce, pair_info_nce, triplet_loss
from training.sampler import TripletSampler

STAGES = (*VISUAL, "fusion", "fused")
"""Image encoders, the paper's visual fusion (``fusion``), the all-branch fusion (``fused``)."""


DEVICES = ("auto", "cpu", "cuda")
# The per-modality content hashes that training reads (geometry and indicators are not
# inputs: changing only them keeps the run).
TRAINED_HASHES = (Region.hash_poi, Region.hash_remote, Region.hash_street, Region.hash_mobility)


class TrainingError(MuseclError, ValueError):
    """The city cannot be trained on as it is (the message says why and what to do)."""


class DeviceError(MuseclError, ValueError):
    """The device asked for does not exist on this machine."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when torch sees a GPU, else cpu; ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}") from exc
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    if device.type == "cuda":
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} was asked for but torch {torch.__version__} ({build}) sees no "
                "CUDA GPU; train with --device cpu (or auto), or install a CUDA build of torch "
                "on a machine with an NVIDIA GPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} does not exist: torch sees {torch.cuda.device_count()} CUDA "
                "GPU(s), numbered from 0"
            )
    return device


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


def city_content(session: Session, data: CityData) -> str | None:
    """One digest of the city's training inputs: per region, in ``data``'s order, its id and
    the content hashes of its POIs, images and mobility. Same data, same digest, in any store.
    ``None`` when the store's regions of the city are no longer those of ``data``.
    """
    rows = {
        r[0]: tuple(r[1:])
        for r in session.execute(
            select(Region.id, Region.region_id, *TRAINED_HASHES).where(
                Region.city_id == data.city.id
            )
        ).all()
    }
    if set(rows) != set(data.region_pks):
        return None
    return digest(*(rows[pk] for pk in data.region_pks))


def run_id(config: TrainConfig, content: str) -> str:
    """The run's id: its settings, the city's content digest and the trainer's stages (a
    trainer with other stages never resumes this one's checkpoints). Where checkpoints live
    is left out: moving them keeps the run."""
    settings = {k: v for k, v in config.to_dict().items() if k != "checkpoint_dir"}
    return digest(json.dumps(settings, sort_keys=True), content, STAGES)[:12]


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor copied to the CPU (state dicts keep their type and metadata)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, _on_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # module versions, read by load_state_dict
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def positives(which: str, data: CityData, config: TrainConfig) -> np.ndarray:
    """Each region's contrastive positives: (n, k) region indices, -1 padded.

    ``spatial``: the ``spatial_neighbours`` nearest regions. ``poi`` / ``mobility`` /
    ``profile`` (both): the ``top_k`` most cosine-similar profiles (see
    :func:`training.similarity.profiles`) after ``similarity_smoothing`` rounds of averaging
    with spatial neighbours.
    """
    knn = similarity.spatial_knn(data.lonlat, config.spatial_neighbours)
    if which == "spatial":
        return knn
    prof = similarity.profiles(
        which,
        n=data.n,
        poi_region=data.poi_region,
        poi_category=data.poi_category,
        inflow=data.inflow,
        outflow=data.outflow,
        od=data.od,
        use_od=config.mobility_od,
    )
    idx, _ = similarity.cosine_topk(
        similarity.smooth(prof, knn, config.similarity_smoothing), config.top_k
    )
    return idx


class Checkpoint:
    """The resumable state of a run: the stage, epoch, weights and optimiser.

    Always saved from CPU tensors and loaded onto the CPU, so a run started on a GPU resumes
    on a machine without one (and back).
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / "state.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("stage") not in (*STAGES, "done"):
            raise TrainingError(
                f"{self.path} is not a checkpoint of this trainer (stage "
                f"{state.get('stage')!r}); delete it or train with --restart"
            )
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(_on_cpu(state), tmp)
        tmp.replace(self.path)


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


class Trainer:
    """One training run for one city (see the module docstring).

    The constructor reads everything the run needs through ``session`` (the caller may close
    it right after); :meth:`fit` trains without touching the store; :meth:`write` stores the
    result through another session.
    """

    def __init__(
        self,
        session: Session,
        city: str,
        config: TrainConfig,
        *,
        resume: bool = True,
        device: str = "cpu",
        show_progress: bool | None = None,
        log: Callable[[str], None] = print,
        parallel: Parallel | None = None,
    ):
        self.t0 = time.perf_counter()
        self.par = parallel or Parallel()
        if not self.par.leader:  # rank 0 speaks for the run
            log, show_progress = (lambda msg: None), False
        self.config, self.log, self.show = config, log, show_progress
        self.device = self.par.device(resolve_device(device))
        self.data = load_city_data(session, city)
        self.has_image = check_city(self.data, config)
        content = city_content(session, self.data)
        assert content is not None, "one read snapshot showed two sets of regions"
        self.content = content
        self.run_id = run_id(config, self.content)
        self.run_dir = Path(config.checkpoint_dir) / self.data.city.name / self.run_id
        self.ckpt = Checkpoint(self.run_dir)
        self.state = self.ckpt.load() if resume else None
        self.text_encoder = TextEncoder(config.text_model)
        text_dim = self.text_encoder.dim
        torch.manual_seed(config.seed)
        # Built on the CPU, so that the initial weights do not depend on the device.
        self.net = MuseclNet(
            config.dim, text_dim, vocabulary=sorted(set(self.data.poi_category)), stem=config.stem
        )
        if self.state is not None:
            self.net.load_state_dict(self.state["net"])
            if self.state["stage"] == "done":
                self.log(f"reusing the finished run {self.run_dir} (--restart trains again)")
            else:
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
        # New cache rows wait for write(): reading must not take a write lock.
        self.pending_text: list[TextEmbedding] = []
        self.text = poi_text_means(
            session,
            self.data,
            self.text_encoder,
            config.text_batch_size,
            show_progress,
            self.pending_text,
        )

    # -------------------------------------------------------------------- device

    def _dev(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the training device (the same tensor on the CPU)."""
        return x.to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA; on the CPU nothing changes (float32, results as tested).
        Losses are computed outside it, in float32."""
        # GPUs older than Ampere have no bf16: they train in float32 rather than fail.
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -------------------------------------------------------------------- similarities

    def positives(self, which: str) -> np.ndarray:
        return positives(which, self.data, self.config)

    # -------------------------------------------------------------------- stages

    def _done(self, stage: str) -> bool:
        if self.state is None:
            return False
        current = self.state["stage"]  # "done" once every stage has finished
        return current == "done" or STAGES.index(stage) < STAGES.index(current)

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
        if self.par.leader:
            self.ckpt.save(self.state)
        faults.point("train:epoch")
        return bad >= patience

    def _finish_stage(self, stage: str, module: torch.nn.Module) -> None:
        if self.state and self.state.get("best_state") is not None:
            module.load_state_dict(self.state["best_state"])
        i = STAGES.index(stage)
        nxt = STAGES[i + 1] if i + 1 < len(STAGES) else "done"
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
        if self.par.leader:
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
        sampler = TripletSampler(self.positives(cfg.similarity[kind]), data.images_of(kind))
        train_anchors = sampler.anchors(self.train_regions)
        val_anchors = sampler.anchors(self.val_regions)
        if len(train_anchors) == 0:
            self.log(
                f"{kind}: no region has both images and a similar region with images; "
                "the encoder keeps its initial weights"
            )
            self._finish_stage(kind, encoder)
            return
        # Several fixed samples per validation anchor: a steadier signal for early stopping.
        val_items, val_regions = self._samples(
            sampler,
            np.repeat(val_anchors, cfg.val_triplets_per_anchor),
            np.random.default_rng([cfg.seed, 99, 0]),
        )
        opt = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if self.state and self.state["stage"] == kind and self.state["opt"]:
            opt.load_state_dict(self.state["opt"])
        s = STAGES.index(kind)
        # Data-parallel: each rank encodes its slice of every batch (config.batch_size is the
        # global batch); the loss sees the whole batch; DDP averages the gradients.
        model = self.par.wrap(encoder, self.device)
        for epoch in range(self._start_epoch(kind), cfg.epochs):
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
            self.history[kind].append(
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
            if self._early_stop(kind, epoch, val_loss, encoder, opt, cfg.patience):
                self.log(f"{kind}: no better validation loss for {cfg.patience} epochs; stopping")
                break
        self._finish_stage(kind, encoder)

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
        cfg = self.config
        fusion = self.net.fusion_visual
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
            val_loss = self.par.agree(val_loss)
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

    def train_fused(self, inputs: RegionInputs) -> None:
        """The all-branch fusion: in-batch InfoNCE between a region's fused vector and that
        of one of its positives (``fused_positive``), the other regions as negatives."""
        cfg = self.config
        fusion = self.net.fusion
        assert fusion is not None
        if self._done("fused"):
            return
        xs_cpu, mask_cpu = inputs.fusion_inputs()
        if self._start_epoch("fused") == 0:
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
        if self.state and self.state["stage"] == "fused" and self.state["opt"]:
            opt.load_state_dict(self.state["opt"])
        s = STAGES.index("fused")
        bs = cfg.fused_batch_size
        for epoch in range(self._start_epoch("fused"), cfg.fused_epochs):
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
            self.history["fused"].append(
                {"epoch": epoch + 1, "train": round(train_loss, 5), "val": round(val_loss, 5)}
            )
            if (epoch + 1) % 10 == 0:
                self.log(
                    f"fused epoch {epoch + 1}: InfoNCE train {train_loss:.4f}, val {val_loss:.4f}"
                )
            if self._early_stop("fused", epoch, val_loss, fusion, opt, cfg.fused_patience):
                self.log(f"fused: stopped at epoch {epoch + 1}")
                break
        self._finish_stage("fused", fusion)

    def fit(self) -> Fitted | None:
        """Train (resume, or reuse a finished run) and embed every region; no database access.
        In a data-parallel run, only rank 0 embeds and saves the model (the others: None)."""
        cfg = self.config
        self.net.to(self.device)
        for kind in VISUAL:
            self.train_images(kind)
        # embed.py runs the networks on the CPU tensors it builds: the write-back embeds the
        # way re-embedding does.
        self.net.cpu()
        visual = visual_means(self.data, self.net, cfg.image_size, self.show)
        counts, mobility = count_inputs(self.data, self.net)
        inputs = RegionInputs(visual, self.text, counts, mobility)
        self.net.to(self.device)
        self.train_fusion(visual, self.text)
        self.train_fused(inputs)
        self.net.cpu()
        if not self.par.leader:
            return None
        result = embed_regions(inputs, self.net, learn_imputation=True)
        checkpoint = self.net.save(
            self.run_dir / "model.pt",
            {**cfg.to_dict(), "text_dim": self.text_encoder.dim, "city": self.data.city.name},
        )
        return Fitted(result, checkpoint, time.perf_counter() - self.t0)

    def write(self, session: Session, fitted: Fitted) -> TrainResult:
        """Store the run as a new, active model version with its embeddings; the caller
        commits. Refuses when the city's training inputs changed since they were read."""
        return self._write(session, fitted.result, fitted.checkpoint, fitted.seconds)

    def _check_unchanged(self, s: Session) -> None:
        """The regions written to must be the ones trained on, with the same content."""
        name = self.data.city.name
        # FOR UPDATE (PostgreSQL): an ingest, which bumps the city's revision, waits for us.
        city = s.scalar(select(City).where(City.id == self.data.city.id).with_for_update())
        if city is None:
            raise TrainingError(f"city {name!r} was deleted while it trained; nothing was written")
        if city_content(s, self.data) != self.content:
            raise TrainingError(
                f"city {name!r} was re-ingested with other data while it trained, so these "
                "embeddings do not fit it; nothing was written. Train again: the new data "
                "make a new run"
            )

    def _write(self, s: Session, result: Any, checkpoint: Path, seconds: float) -> TrainResult:
        data, cfg = self.data, self.config
        self._check_unchanged(s)
        s.add_all(_not_cached(s, self.pending_text))
        keep = self.has_image
        if not keep.all():  # skip_regions_without_images: leave them out
            self.log(f"{int((~keep).sum())} region(s) without images are left unembedded")
            data = data.only_regions(keep)
            result = result.only(keep)
        rev = Revision(operation="train", city_id=data.city.id)
        s.add(rev)
        s.flush()
        metrics = {
            "history": self.history,
            "seconds": round(seconds, 1),
            "imputed": {k: int(v.sum()) for k, v in result.imputed.items()},
            "mean_attention": {
                m: round(float(a.mean()), 4)
                for m, a in zip(result.branches, result.alpha.T, strict=True)
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
        counts = write_region_embeddings(s, data.region_pks, mv.id, result, rev.id)
        rev.summary = {"model_version": mv.id, "embeddings": counts}
        s.flush()
        return TrainResult(mv.id, rev.id, self.run_dir, checkpoint, self.history, counts, seconds)


def _not_cached(s: Session, rows: list[TextEmbedding]) -> list[TextEmbedding]:
    """The text-cache rows still missing: another run may have cached the same POI texts
    while this one trained."""
    keys = sorted({r.content_hash for r in rows})
    stmt = select(TextEmbedding.encoder, TextEmbedding.content_hash)
    have = {(e, k) for e, k in rows_in(s, stmt, TextEmbedding.content_hash, keys)}
    return [r for r in rows if (r.encoder, r.content_hash) not in have]


@contextlib.contextmanager
def _read_session(engine: Engine) -> Iterator[Session]:
    """A session for reading only, closed (its transaction ended) when the block ends."""
    with session_factory(engine)() as session:
        if engine.dialect.name == "postgresql":
            # One snapshot for all the reads, as SQLite's transactions give: an ingest that
            # commits midway is either wholly seen or not at all.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield session


def train_city(
    engine: Engine,
    city: str,
    config: TrainConfig,
    *,
    resume: bool = True,
    device: str = "cpu",
    show_progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train MuseCL on a city in the store and commit a new, active model version with the
    embeddings of every region.

    The store is read in one short session and written in one short transaction; training in
    between holds no connection. ``device`` is ``cpu`` (default: reproducible), ``cuda`` or
    ``auto``; it does not change the run id, so a run may resume on another device.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) this process is one rank of a
    data-parallel run (:mod:`training.distributed`): ``config.batch_size`` and the other
    batch sizes are global; rank 0 writes the model version once every rank has finished,
    and every rank returns it.
    """
    parallel = Parallel.from_env(resolve_device(device))
    try:
        with _read_session(engine) as session:
            trainer = Trainer(
                session,
                city,
                config,
                resume=resume,
                device=device,
                show_progress=show_progress,
                log=log,
                parallel=parallel,
            )
        faults.point("train:read")
        fitted = trainer.fit()
        faults.point("train:fitted")
        # Every rank has finished: one that died fails the others here, before any write.
        parallel.barrier()
        if fitted is None:  # not rank 0: its result, or its failure
            shared = parallel.share(None)
            if isinstance(shared, TrainResult):
                return shared
            raise TrainingError(f"rank 0 could not write the model version: {shared}")
        try:
            with transaction(engine, write=True) as session:
                out = trainer.write(session, fitted)
                faults.point("train:written")
            faults.point("train:committed")
        except BaseException as exc:
            parallel.share(str(exc) or type(exc).__name__)
            raise
        return parallel.share(out)
    finally:
        parallel.close()
