"""Training configuration: one frozen dataclass, read from JSON, saved next to the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musecl_store.errors import MuseclError

SIMILARITIES = ("poi", "mobility")


class ConfigError(MuseclError, ValueError):
    """A training config key or value that does not exist or does not fit."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a MuseCL run (defaults fit a ~600-region city on 2 CPU cores)."""

    seed: int = 0
    dim: int = 128
    image_size: int = 64
    # Which region similarity picks the contrastive pairs of each visual modality (paper:
    # remote tiles by POI mix, street views by mobility).
    similarity: dict[str, str] = field(
        default_factory=lambda: {"remote": "poi", "street": "mobility"}
    )
    top_k: int = 10
    mobility_od: bool = True
    # Image encoders (triplet loss).
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    margin: float = 5.0
    patience: int = 4
    val_triplets_per_anchor: int = 4
    val_fraction: float = 0.15
    pretrained: dict[str, str | None] = field(
        default_factory=lambda: {"remote": None, "street": None}
    )
    # Text encoder and attentive fusion (InfoNCE).
    text_model: str = "all-MiniLM-L6-v2"
    text_batch_size: int = 64
    temperature: float = 0.5
    fusion_epochs: int = 150
    fusion_batch_size: int = 128
    fusion_lr: float = 2e-3
    fusion_patience: int = 15
    fusion_weight_decay: float = 1e-3
    # During fusion training, hide one of a region's two visual modalities with this
    # probability, so the attention learns to use both and copes with missing ones.
    modality_dropout: float = 0.0
    skip_regions_without_images: bool = False
    checkpoint_dir: str = ".musecl-checkpoints"

    def __post_init__(self) -> None:
        for m, s in self.similarity.items():
            if m not in ("remote", "street") or s not in SIMILARITIES:
                raise ConfigError(
                    f"similarity: {m!r} -> {s!r} is not valid; map 'remote' and 'street' to one "
                    f"of {', '.join(SIMILARITIES)}"
                )
        positive = ["dim", "image_size", "top_k", "batch_size", "fusion_batch_size"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.val_fraction < 0.9:
            raise ConfigError(f"val_fraction must be in [0, 0.9), not {self.val_fraction}")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError(f"modality_dropout must be in [0, 1), not {self.modality_dropout}")
        if self.temperature <= 0 or self.margin <= 0:
            raise ConfigError("temperature and margin must be positive")

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
