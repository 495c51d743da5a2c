"""Training configuration: one frozen dataclass, read from JSON, saved next to the weights."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musecl_store.errors import MuseclError
from musecl_store.nn.resnet import STEMS
from training.similarity import SIMILARITIES

IMAGE_LOSSES = ("infonce", "triplet")


class ConfigError(MuseclError, ValueError):
    """A training config key or value that does not exist or does not fit."""


_INT64 = 2**63


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _type_problem(kind: str, value: Any) -> str | None:
    """Why ``value`` is not of the annotated ``kind`` (a field's type as written), or None."""
    if kind == "bool":
        return None if isinstance(value, bool) else "true or false"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return "an integer"
        return None if abs(value) < _INT64 else "an integer that fits in 64 bits"
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "a number"
        try:
            return None if math.isfinite(value) else "a finite number"
        except OverflowError:
            return "a finite number"
    if kind == "str":
        if not isinstance(value, str):
            return "a string"
        return "a string without NUL characters" if "\x00" in value else None
    if kind.startswith("dict[str, str"):
        nullable = kind.endswith("| None]")
        what = "an object of strings" + (" or nulls" if nullable else "")
        if not isinstance(value, dict):
            return what
        for k, v in value.items():
            if not isinstance(k, str) or not (isinstance(v, str) or (nullable and v is None)):
                return what
        return None
    return None  # pragma: no cover - a field of a type this check does not know


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
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = _type_problem(str(f.type), value)
            if want:
                raise ConfigError(f"{f.name} must be {want}, not {_short(value)}")
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
            raise ConfigError(
                f"stem: {_short(self.stem)} is not valid; use one of {', '.join(STEMS)}"
            )
        for m in self.pretrained:
            if m not in ("remote", "street"):
                raise ConfigError(
                    f"pretrained: {_short(m)} is not a modality; use 'remote' and 'street'"
                )
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
            "text_batch_size",
            "val_triplets_per_anchor",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        counts = ["epochs", "fusion_epochs", "fused_epochs"]
        counts += ["patience", "fusion_patience", "fused_patience"]
        for name in counts:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0, not {getattr(self, name)}")
        for name in ["lr", "fusion_lr", "fused_lr"]:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        for name in ["weight_decay", "fusion_weight_decay", "fused_weight_decay"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0, not {getattr(self, name)}")
        for name in ["text_model", "checkpoint_dir"]:
            if not getattr(self, name).strip():
                raise ConfigError(f"{name} must not be empty")
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
        """A config from a dict of keys and values.

        Raises:
            ConfigError: naming ``source`` and the key at fault.
        """
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: the config must be a JSON object, not {_short(values)}")
        keys = cls.keys()
        unknown = sorted(
            k if isinstance(k, str) and k.isidentifier() else _short(k, 40)
            for k in values
            if k not in keys
        )
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown[:5])}{more}; valid keys are "
                f"{', '.join(keys)}"
            )
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """A config from a JSON file; keyword overrides that are not None win over it.

        Raises:
            ConfigError: naming the file (and line, or the key at fault).
        """
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except OSError as exc:
            raise ConfigError(
                f"config file {path}: cannot read it ({exc.strerror or exc})"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        except ValueError as exc:  # an integer past Python's 4300-digit conversion limit
            raise ConfigError(f"{path}: invalid JSON (a number is too long)") from exc
        except RecursionError as exc:
            raise ConfigError(f"{path}: invalid JSON (nested too deeply)") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the config must be a JSON object")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
