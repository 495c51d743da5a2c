"""The run shared by train, embed and reembed: a trained network turns each region's inputs
(:mod:`musecl_store.embedding.inputs`) into its four kinds of embeddings
(:func:`embed_regions`), which :func:`write_region_embeddings` stores; :func:`embed_city`
embeds a whole city with a frozen model version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from musecl_store import faults
from musecl_store.embedding.inputs import (
    RegionInputs,
    load_city_data,
    region_inputs,
)
from musecl_store.errors import InputError
from musecl_store.nn.fusion import BRANCHES, VISUAL
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.text import TextEncoder
from musecl_store.store.chunks import delete_in
from musecl_store.store.tables import Embedding, ModelVersion, Revision, TextEmbedding
from musecl_store.store.vectors import load_embeddings_flags, put_embeddings

__all__ = [
    "RegionEmbeddings",
    "embed_city",
    "embed_regions",
    "fuse_visual",
    "load_model",
    "visual_fusion_vectors",
    "write_region_embeddings",
]


@dataclass
class RegionEmbeddings:
    """Per region (in input order): one vector per kind, what was imputed, the attention
    weights of the fused vector (columns ``branches``) and the mean POI text embedding."""

    vectors: dict[str, np.ndarray]
    imputed: dict[str, np.ndarray]
    alpha: np.ndarray  # (n, len(branches)), 0 where a branch is missing
    branches: tuple[str, ...]
    text_mean: np.ndarray

    def attention(self) -> list[dict[str, Any] | None]:
        return [
            {m: float(a) for m, a in zip(self.branches, row, strict=True)} for row in self.alpha
        ]

    def only(self, keep: np.ndarray) -> RegionEmbeddings:
        return RegionEmbeddings(
            {k: v[keep] for k, v in self.vectors.items()},
            {k: v[keep] for k, v in self.imputed.items()},
            self.alpha[keep],
            self.branches,
            self.text_mean[keep],
        )


@torch.no_grad()
def embed_regions(
    inputs: RegionInputs, net: MuseclNet, *, learn_imputation: bool = False
) -> RegionEmbeddings:
    """Modality embeddings, fused embedding and attention for every region.

    A region lacking a modality gets the model's imputation vector for it (the modality's
    mean over the training city, set once with ``learn_imputation`` when training), flagged
    as imputed: every region's vectors depend on that region alone, so re-embedding a few
    regions gives what embedding them all would. The fused vector uses only the branches a
    region has (attention weight 0 otherwise); a region with no image at all gets no fused
    vector (zeros, flagged as imputed; callers leave such regions unembedded).
    """
    net.eval()
    visual = inputs.visual
    mask = np.column_stack([visual[m][1] for m in VISUAL])
    ok = mask.any(axis=1)
    if net.fusion is not None:
        branches: tuple[str, ...] = BRANCHES
        xs, fmask = inputs.fusion_inputs()
        fused = np.zeros((inputs.n, net.dim), dtype=np.float32)
        alpha = np.zeros((inputs.n, len(BRANCHES)), dtype=np.float32)
        if ok.any():
            keep = torch.from_numpy(ok)
            f, a = net.fusion([x[keep] for x in xs], fmask[keep])
            fused[ok], alpha[ok] = f.numpy(), a.numpy()
    else:
        branches = VISUAL
        fused, alpha = fuse_visual(net, {m: visual[m][0] for m in VISUAL}, mask)
    text_mean, has_text = inputs.text
    vectors = {m: visual[m][0].copy() for m in VISUAL}
    vectors["poi"] = net.fusion_visual.text(torch.from_numpy(text_mean)).numpy()
    imputed = {m: ~visual[m][1] for m in VISUAL}
    imputed["poi"] = ~has_text
    if learn_imputation:
        net.set_imputation({k: v[~imputed[k]] for k, v in vectors.items()})
    for kind, vec in vectors.items():
        vec[imputed[kind]] = net.imputation(kind)
    vectors["fused"] = fused
    imputed["fused"] = np.logical_not(ok)
    return RegionEmbeddings(vectors, imputed, alpha, branches, text_mean)


@torch.no_grad()
def fuse_visual(
    net: MuseclNet, vectors: dict[str, np.ndarray], mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's visual-only fusion of remote and street vectors (zeros where a region
    has neither)."""
    ok = mask.any(axis=1)
    fused = np.zeros((len(mask), net.dim), dtype=np.float32)
    alpha = np.zeros(mask.shape, dtype=np.float32)
    if ok.any():
        emb = np.stack([vectors[m] for m in VISUAL], axis=1)[ok]
        f, a = net.fusion_visual(torch.from_numpy(emb), torch.from_numpy(mask[ok]))
        fused[ok], alpha[ok] = f.numpy(), a.numpy()
    return fused, alpha


def write_region_embeddings(
    session: Session,
    region_pks: Sequence[int],
    model_version_id: int,
    result: RegionEmbeddings,
    revision: int,
    kinds: dict[str, np.ndarray] | None = None,
) -> dict[str, int]:
    """Write (replacing what is there) the embeddings of the given regions, rows in
    ``result`` order; the one writer of train, embed and reembed.

    Args:
        kinds: per kind, a bool mask of the rows to write (default: every row of every kind).

    Returns:
        rows written per kind.
    """
    attention = result.attention()
    pks = np.asarray(region_pks, dtype=np.int64)
    counts = {}
    for kind, vec in result.vectors.items():
        rows = np.flatnonzero(kinds[kind]) if kinds is not None else np.arange(len(pks))
        if not len(rows):
            counts[kind] = 0
            continue
        pk_list = pks[rows].tolist()
        delete_in(
            session,
            Embedding,
            Embedding.region_pk,
            pk_list,
            Embedding.model_version_id == model_version_id,
            Embedding.kind == kind,
        )
        counts[kind] = put_embeddings(
            session,
            model_version_id,
            kind,
            pk_list,
            vec[rows],
            revision,
            attention=[attention[j] for j in rows] if kind == "fused" else None,
            imputed=result.imputed[kind][rows].tolist() if kind != "fused" else None,
        )
    return counts


def load_model(session: Session, model_version_id: int) -> tuple[MuseclNet, dict[str, Any]]:
    """A model version's network (frozen) and the config it was trained with.

    Raises:
        InputError: no such model version.
    """
    mv = session.get(ModelVersion, model_version_id)
    if mv is None:
        raise InputError(f"model version {model_version_id} does not exist")
    return MuseclNet.load(mv.checkpoint_path)


def embed_city(
    session: Session, city: str, model_version_id: int, show_progress: bool | None = None
) -> dict[str, Any]:
    """Embed every region of ``city`` with a trained model version (frozen), replacing that
    version's embeddings of the city under a new revision. This is how a model trained on one
    city embeds another, so that both live in one space (cross-city search and transfer).

    Regions without any image get no embeddings (they are counted in the result).
    """
    net, config = load_model(session, model_version_id)
    data = load_city_data(session, city, mobility=net.fusion is not None)
    encoder = TextEncoder(config.get("text_model", "all-MiniLM-L6-v2"))
    pending: list[TextEmbedding] = []
    result = embed_regions(
        region_inputs(session, data, net, encoder, config, show_progress, pending), net
    )
    faults.point("embed:encoded")
    keep = ~result.imputed["fused"]
    session.add_all(pending)
    rev = Revision(
        operation="embed", city_id=data.city.id, summary={"model_version": model_version_id}
    )
    session.add(rev)
    session.flush()
    delete_in(  # regions that lost their images too
        session,
        Embedding,
        Embedding.region_pk,
        data.region_pks,
        Embedding.model_version_id == model_version_id,
    )
    counts = write_region_embeddings(
        session,
        [pk for pk, k in zip(data.region_pks, keep, strict=True) if k],
        model_version_id,
        result.only(keep),
        rev.id,
    )
    rev.summary = {
        "model_version": model_version_id,
        "embeddings": counts,
        "without_images": int((~keep).sum()),
    }
    session.flush()
    return {
        "city": city,
        "model_version": model_version_id,
        "revision": rev.id,
        "embeddings": counts,
        "without_images": int((~keep).sum()),
    }


def visual_fusion_vectors(
    session: Session, model_version_id: int, city_id: int
) -> tuple[list[str], np.ndarray]:
    """The paper's visual-only fusion (``fused_visual``) of a model version's stored remote
    and street vectors, for the ablation row of the evaluation table (not stored).

    Returns:
        (region ids, matrix), in the order of ``load_embeddings``; empty when the model
        version has no stored vectors for the city.
    """
    net, _ = load_model(session, model_version_id)
    ids: list[str] = []
    vecs: dict[str, np.ndarray] = {}
    masks = []
    for kind in VISUAL:
        ids_k, mat, imputed = load_embeddings_flags(session, model_version_id, kind, city_id)
        if ids and ids_k != ids:
            raise ValueError(f"model version {model_version_id} has ragged {kind} embeddings")
        ids, vecs[kind] = ids_k, mat
        masks.append(~imputed)
    if not ids:
        return [], np.zeros((0, 0), dtype=np.float32)
    fused, _ = fuse_visual(net, vecs, np.column_stack(masks))
    return ids, fused
