"""The trained MuseCL network as one module: two image encoders and the two fusion modules.

Saved as one file (``model.pt``: state dict + hyperparameters) with ``config.json`` beside
it; loaded with ``weights_only=True``. The store loads it to embed regions without importing
the trainer.

``fusion_visual`` is the paper's fusion of the two visual embeddings (kept as an ablation);
``fusion`` is the product's fused vector over every branch (``BRANCHES``). A model file of
format 2 (before the all-branch fusion) has only the visual one, which then makes ``fused``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from musecl_store.errors import MuseclError
from musecl_store.nn.counts import MOBILITY_FEATURES
from musecl_store.nn.fusion import VISUAL, AttentiveFusion, ModalityFusion
from musecl_store.nn.resnet import ImageEncoder

FORMAT = 3
FORMATS = (2, 3)
IMPUTED = ("remote", "street", "poi")


class CheckpointError(MuseclError, ValueError):
    """A model file is missing, unreadable or of another format."""


class MuseclNet(nn.Module):
    """Image encoders, the paper's visual fusion and (unless ``vocabulary`` is None, as in
    format-2 files) the all-branch fusion.

    Args:
        vocabulary: the POI categories of the count branch, in column order.
    """

    def __init__(
        self,
        dim: int = 128,
        text_dim: int = 384,
        vocabulary: list[str] | None = None,
        stem: str = "imagenet",
    ):
        super().__init__()
        self.dim, self.text_dim, self.stem = dim, text_dim, stem
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.encoders = nn.ModuleDict({m: ImageEncoder(dim, stem) for m in VISUAL})
        self.fusion_visual = AttentiveFusion(dim, text_dim, VISUAL)
        self.fusion: ModalityFusion | None = None
        if vocabulary is not None:
            dims = (dim, dim, text_dim, len(vocabulary) + 1, len(MOBILITY_FEATURES))
            self.fusion = ModalityFusion(dims, dim)
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
                "stem": self.stem,
                "vocabulary": json.dumps(self.vocabulary),
                "config": json.dumps(config),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
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
        if not isinstance(blob, dict) or blob.get("format") not in FORMATS:
            raise CheckpointError(
                f"{path} is not a musecl model file (formats {', '.join(map(str, FORMATS))})"
            )
        state = dict(blob["state_dict"])
        if blob["format"] == 2:  # the visual fusion was called `fusion`
            state = {
                (f"fusion_visual.{k[7:]}" if k.startswith("fusion.") else k): v
                for k, v in state.items()
            }
        vocabulary = json.loads(blob.get("vocabulary", "null"))
        net = cls(int(blob["dim"]), int(blob["text_dim"]), vocabulary, blob.get("stem", "imagenet"))
        net.load_state_dict(state)
        net.eval()
        return net, json.loads(blob["config"])
