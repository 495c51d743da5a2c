"""The trained MuseCL network as one module: two image encoders and the fusion module.

Saved as one file (``model.pt``: state dict + hyperparameters) with ``config.json`` beside
it; loaded with ``weights_only=True``. The store loads it to embed regions without importing
the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from musecl_store.errors import MuseclError
from musecl_store.nn.fusion import VISUAL, AttentiveFusion
from musecl_store.nn.resnet import ImageEncoder

FORMAT = 2
IMPUTED = ("remote", "street", "poi")


class CheckpointError(MuseclError, ValueError):
    """A model file is missing, unreadable or of another format."""


class MuseclNet(nn.Module):
    def __init__(self, dim: int = 128, text_dim: int = 384):
        super().__init__()
        self.dim, self.text_dim = dim, text_dim
        self.encoders = nn.ModuleDict({m: ImageEncoder(dim) for m in VISUAL})
        self.fusion = AttentiveFusion(dim, text_dim, VISUAL)
        # The vector a region lacking a modality gets: that modality's training-city mean.
        self.impute: torch.Tensor
        self.register_buffer("impute", torch.zeros(len(IMPUTED), dim))

    def set_imputation(self, present: dict[str, np.ndarray]) -> None:
        """Set each modality's imputation vector to the mean of the given rows."""
        for i, kind in enumerate(IMPUTED):
            rows = present.get(kind)
            if rows is not None and len(rows):
                self.impute[i] = torch.from_numpy(np.asarray(rows, np.float32).mean(axis=0))

    def imputation(self, kind: str) -> np.ndarray:
        return self.impute[IMPUTED.index(kind)].numpy().copy()

    def save(self, path: str | Path, config: dict[str, Any]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "format": FORMAT,
                "dim": self.dim,
                "text_dim": self.text_dim,
                "config": json.dumps(config),
                "state_dict": self.state_dict(),
            },
            tmp,
        )
        tmp.replace(path)  # atomic: a crash never leaves half a model file
        (path.parent / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> tuple[MuseclNet, dict[str, Any]]:
        path = Path(path)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise CheckpointError(f"model file {path} does not exist") from exc
        except Exception as exc:
            raise CheckpointError(f"cannot read model file {path}: {exc}") from exc
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a musecl model file (format {FORMAT})")
        net = cls(int(blob["dim"]), int(blob["text_dim"]))
        net.load_state_dict(blob["state_dict"])
        net.eval()
        return net, json.loads(blob["config"])
