"""Training configuration: one frozen dataclass, read from JSON, saved next to the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musecl_store.errors import MuseclError
from musecl_store.nn.resnet import STEMS
from training.similarity import SIMILARITIES

IMAGE_LOSSES = ("infonce", "triplet")


class ConfigError(MuseclError, ValueError):
    """A training config key or value that does not exist or does not fit."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a MuseCL run (defaults fit a ~600-region city on 2 CPU cores)."""

    seed: int = 0
    dim: int = 128
    image_size: int = 64
    # Which region similarity picks the contrastive positives of each visual modality (paper:
    # remote tiles by POI mix, street views by mobility; "profile" = both; "spatial" = the
    # nearest regions).
    similarity: dict[str, str] = field(
        default_factory=lambda: {"remote": "poi", "street": "mobility"}
    )
    top_k: int = 10
    mobility_od: bool = True
    # Profiles are averaged with their spatial neighbours' this many times before the cosine
    # (0 = the paper's raw profiles); `spatial_neighbours` nearest centroids are neighbours.
    similarity_smoothing: int = 2
    spatial_neighbours: int = 6
    # Image encoders: in-batch InfoNCE over (anchor, positive) pairs of normalised outputs
    # ("infonce"), or the paper's triplet margin loss on raw outputs ("triplet").
    image_loss: str = "infonce"
    image_temperature: float = 0.1
    # Chance that a pair's positive is another image of the anchor's own region (when it
    # has several): two views of one place.
    same_region: float = 0.5
    stem: str = "imagenet"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    margin: float = 5.0
    patience: int = 4
    val_triplets_per_anchor: int = 4
    val_fraction: float = 0.15
    pretrained: dict[str, str | None] = field(
        default_factory=lambda: {"remote": None, "street": None}
    )
    # Text encoder and the paper's visual fusion (InfoNCE to the POI text): `fused_visual`.
    text_model: str = "all-MiniLM-L6-v2"
    text_batch_size: int = 64
    temperature: float = 0.5
    fusion_epochs: int = 150
    fusion_batch_size: int = 128
    fusion_lr: float = 2e-3
    fusion_patience: int = 15
    fusion_weight_decay: float = 1e-3
    # During the visual fusion's training, hide one of a region's two visual modalities with
    # this probability, so the attention learns to use both and copes with missing ones.
    modality_dropout: float = 0.0
    # The all-branch fusion (`fused`): InfoNCE between a region's fused vector and that of
    # one of its positives (`fused_positive`, a similarity as above). Measured on seed 0 with
    # untrained image encoders (ridge R² mean): profile 0.738, spatial 0.743, counts 0.603;
    # profile keeps the POI count (0.858 vs 0.817), which regions are compared on most.
    fused_positive: str = "profile"
    fused_epochs: int = 40
    fused_batch_size: int = 128
    fused_lr: float = 2e-3
    fused_weight_decay: float = 1e-3
    fused_temperature: float = 0.2
    fused_patience: int = 8
    skip_regions_without_images: bool = False
    checkpoint_dir: str = ".musecl-checkpoints"

    def __post_init__(self) -> None:
        for m, s in self.similarity.items():
            if m not in ("remote", "street") or s not in SIMILARITIES:
                raise ConfigError(
                    f"similarity: {m!r} -> {s!r} is not valid; map 'remote' and 'street' to one "
                    f"of {', '.join(SIMILARITIES)}"
                )
        if self.fused_positive not in SIMILARITIES:
            raise ConfigError(
                f"fused_positive: {self.fused_positive!r} is not valid; use one of "
                f"{', '.join(SIMILARITIES)}"
            )
        if self.image_loss not in IMAGE_LOSSES:
            raise ConfigError(
                f"image_loss: {self.image_loss!r} is not valid; use one of "
                f"{', '.join(IMAGE_LOSSES)}"
            )
        if self.stem not in STEMS:
            raise ConfigError(f"stem: {self.stem!r} is not valid; use one of {', '.join(STEMS)}")
        if not 0 <= self.same_region <= 1:
            raise ConfigError(f"same_region must be in [0, 1], not {self.same_region}")
        positive = [
            "dim",
            "image_size",
            "top_k",
            "batch_size",
            "fusion_batch_size",
            "fused_batch_size",
            "spatial_neighbours",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.val_fraction < 0.9:
            raise ConfigError(f"val_fraction must be in [0, 0.9), not {self.val_fraction}")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError(f"modality_dropout must be in [0, 1), not {self.modality_dropout}")
        if self.similarity_smoothing < 0:
            raise ConfigError(
                f"similarity_smoothing must be at least 0, not {self.similarity_smoothing}"
            )
        temps = (self.temperature, self.image_temperature, self.fused_temperature, self.margin)
        if min(temps) <= 0:
            raise ConfigError("temperatures and margin must be positive")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are "
                f"{', '.join(cls.keys())}"
            )
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - wrong value types
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the config must be a JSON object")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
