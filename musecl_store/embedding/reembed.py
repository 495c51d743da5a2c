"""Incremental re-embedding: after an ingest changed some regions, recompute only what changed
with the frozen model, in one transaction under a new revision.

Which regions: by default every region whose change log has a change to an embedded
modality (remote, street, poi, mobility) after the vectors that read it were written, and
every region without embeddings; or the given region ids; or the changes since a revision;
or all (``--all``, the full re-embed the incremental one must equal). Which kinds: a
region's remote or street vector is recomputed when that modality changed, its poi vector
when its POIs changed, and its fused vector (and attention) when any of the four did (only
remote or street for a format-2 model, whose fused vector is visual). Unchanged vectors and
unchanged regions are not touched (their revision stays).

Every vector depends on its region alone (imputation uses the model's stored means; POI
counts and mobility features read the region's own POIs and trips), so the result equals a
full re-embed with the same model for those regions. Images of an unchanged modality are
not read again: their stored vector is what a full re-embed computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store import faults
from musecl_store.embedding.images import encode_images
from musecl_store.embedding.inputs import (
    CityData,
    RegionInputs,
    count_inputs,
    load_city_data,
    poi_text_means,
    region_means,
    rows_of,
)
from musecl_store.embedding.run import RegionEmbeddings, embed_regions, write_region_embeddings
from musecl_store.errors import MuseclError
from musecl_store.nn.fusion import VISUAL
from musecl_store.nn.model import MuseclNet
from musecl_store.nn.text import TextEncoder
from musecl_store.store.chunks import rows_in
from musecl_store.store.tables import (
    EMBEDDING_KINDS,
    Embedding,
    ModelVersion,
    Region,
    RegionChange,
    Revision,
)
from musecl_store.store.versions import resolve as resolve_model_version

EMBEDDED = ("remote", "street", "poi", "mobility")
"""The modalities whose change means re-embedding a region."""
STEPS = faults.POINTS["reembed"]
"""Its fault points, in order (see :mod:`musecl_store.faults`)."""


class ReembedError(MuseclError, LookupError):
    """Unknown regions or model version."""


@dataclass
class ReembedResult:
    city: str
    model_version: int
    revision: int | None
    regions: list[str]
    recomputed: dict[str, int]
    old_fused: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    region_pks: list[int] = field(default_factory=list, repr=False)  # of ``regions``

    def to_dict(self) -> dict[str, Any]:
        return {
            "city": self.city,
            "model_version": self.model_version,
            "revision": self.revision,
            "regions": len(self.regions),
            "recomputed": self.recomputed,
        }


# What each embedded modality's change recomputes is decided against the revision of the
# vector that reads it: its own kind, and for mobility (read by the fused vector only) fused.
REVISION_KIND = {"remote": "remote", "street": "street", "poi": "poi", "mobility": "fused"}


def plan(
    session: Session,
    data: CityData,
    mv: int,
    *,
    region_ids: list[str] | None = None,
    since: int | None = None,
    all_regions: bool = False,
    modalities: tuple[str, ...] = EMBEDDED,
) -> dict[int, set[str]]:
    """Region index (in ``data``) -> the embedded modalities to recompute."""
    index = {pk: i for i, pk in enumerate(data.region_pks)}
    everything = set(modalities)
    if all_regions:
        return {i: set(everything) for i in range(data.n)}
    if region_ids is not None:
        known = {r: i for i, r in enumerate(data.region_ids)}
        missing = [r for r in region_ids if r not in known]
        if missing:
            raise ReembedError(f"city {data.city.name!r} has no region(s) {', '.join(missing[:5])}")
        return {known[r]: set(everything) for r in region_ids}
    stored: dict[tuple[int, str], int] = {
        (pk, kind): rev
        for pk, kind, rev in session.execute(
            select(Embedding.region_pk, Embedding.kind, Embedding.revision).where(
                Embedding.model_version_id == mv,
                Embedding.region_pk.in_(select(Region.id).where(Region.city_id == data.city.id)),
            )
        ).all()
    }
    out: dict[int, set[str]] = {
        i: set(everything) for pk, i in index.items() if (pk, "fused") not in stored
    }
    pk_of = dict(zip(data.region_ids, data.region_pks, strict=True))
    changes = session.execute(
        select(
            RegionChange.region_id,
            RegionChange.change,
            RegionChange.modalities,
            RegionChange.revision_id,
        )
        .where(RegionChange.city_id == data.city.id)
        .where(RegionChange.revision_id > (since or 0))
    ).all()
    for rid, change, mods, rev in changes:
        pk = pk_of.get(rid)
        if pk is None or change == "removed":
            continue  # removed regions lost their embeddings with them
        wanted = everything if change == "added" else set(mods) & everything
        if since is None:  # only what changed after the vector that reads it was written
            wanted = {m for m in wanted if stored.get((pk, REVISION_KIND[m]), -1) < rev}
        if wanted:
            out.setdefault(index[pk], set()).update(wanted)
    return out


def _stored(
    session: Session, mv: int, kind: str, pks: list[int]
) -> dict[int, tuple[np.ndarray, bool]]:
    """The stored vector and imputed flag of these regions' embeddings of one kind."""
    out: dict[int, tuple[np.ndarray, bool]] = {}
    stmt = select(Embedding.region_pk, Embedding.vector, Embedding.imputed).where(
        Embedding.model_version_id == mv, Embedding.kind == kind
    )
    for pk, vec, imputed in rows_in(session, stmt, Embedding.region_pk, pks):
        out[pk] = (np.asarray(vec, dtype=np.float32), bool(imputed))
    return out


@dataclass
class _Model:
    """The frozen model to re-embed with, and the embedded modalities its vectors read."""

    mv: int
    net: MuseclNet
    config: dict[str, Any]
    modalities: tuple[str, ...]


@dataclass
class _Job:
    """A planned re-embedding: the regions (indices into ``data``, which holds their images,
    POIs and trips), their pks, their stored vectors, and per modality which changed."""

    model: _Model
    data: CityData
    regions: list[int]
    pks: list[int]
    old: dict[str, dict[int, tuple[np.ndarray, bool]]]
    changed: dict[str, np.ndarray]

    @property
    def rows(self) -> np.ndarray:
        return np.array(self.regions, dtype=np.int64)


def reembed(
    session: Session,
    city: str,
    *,
    model_version: int | None = None,
    region_ids: list[str] | None = None,
    since: int | None = None,
    all_regions: bool = False,
    show_progress: bool | None = None,
) -> ReembedResult:
    """Recompute the embeddings of changed regions (see the module docstring); the caller
    commits. Returns what was recomputed and the old fused vectors (for the drift report)."""
    from musecl_store.store.cities import get_city

    get_city(session, city)
    model = _load_model(session, resolve_model_version(session, city, model_version))
    listing = load_city_data(session, city, only=[], mobility=False)  # the regions alone
    todo = plan(
        session,
        listing,
        model.mv,
        region_ids=region_ids,
        since=since,
        all_regions=all_regions,
        modalities=model.modalities,
    )
    faults.point("reembed:planned")
    if not todo:
        return ReembedResult(city, model.mv, None, [], {k: 0 for k in EMBEDDING_KINDS})
    job = _read(session, model, listing, todo, all_regions)
    visual = _visual_inputs(job, show_progress)
    faults.point("reembed:images_encoded")
    pending: list[Any] = []
    result = embed_regions(_inputs(session, job, visual, show_progress, pending), model.net)
    faults.point("reembed:texts_encoded")
    rev, recomputed = _write(session, job, result, pending)
    faults.point("reembed:written")
    data, pks = job.data, job.pks
    old_fused = {
        data.region_ids[r]: job.old["fused"][pk][0]
        for r, pk in zip(job.regions, pks, strict=True)
        if pk in job.old["fused"]
    }
    ids = [data.region_ids[r] for r in job.regions]
    return ReembedResult(city, model.mv, rev, ids, recomputed, old_fused, pks)


def _load_model(session: Session, mv: int) -> _Model:
    row = session.get(ModelVersion, mv)
    if row is None:
        raise ReembedError(f"model version {mv} does not exist")
    net, config = MuseclNet.load(row.checkpoint_path)
    # A format-2 model's vectors do not read mobility: its changes change nothing.
    visual_only = net.fusion is None
    modalities = tuple(m for m in EMBEDDED if not (visual_only and m == "mobility"))
    return _Model(mv, net, config, modalities)


def _read(
    session: Session,
    model: _Model,
    listing: CityData,
    todo: dict[int, set[str]],
    all_regions: bool,
) -> _Job:
    """The planned regions (``todo``, indices into ``listing``): their images, POIs and
    trips, their stored vectors, and which of their modalities changed."""
    regions = sorted(todo)
    # images, POIs and trips of the regions to re-embed only: the cost follows the change
    data = load_city_data(
        session,
        listing.city.name,
        mobility=model.net.fusion is not None,
        only=None if all_regions else [listing.region_pks[r] for r in regions],
    )
    pks = [data.region_pks[r] for r in regions]
    old = {kind: _stored(session, model.mv, kind, pks) for kind in EMBEDDING_KINDS}
    changed = {m: np.array([m in todo[r] for r in regions], dtype=bool) for m in model.modalities}
    return _Job(model, data, regions, pks, old, changed)


def _visual_inputs(
    job: _Job, show_progress: bool | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per visual kind, each region's mean image vector and whether it has images: encoded
    where that kind changed, the stored vector where it did not."""
    data, regions, pks, old = job.data, job.regions, job.pks, job.old
    net, size = job.model.net, int(job.model.config["image_size"])
    visual: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for kind in VISUAL:
        changed = job.changed[kind]
        has = np.bincount(data.images[kind].region, minlength=data.n)[job.rows] > 0
        vec = np.zeros((len(regions), net.dim), dtype=np.float32)
        encode = {r for r, c in zip(regions, changed, strict=True) if c}
        sub = data.images[kind].of_regions(encode)
        if sub.paths:
            local = data.with_images(kind, sub)
            emb = encode_images(net.encoders[kind], local.pixels(kind, size, show_progress))
            pos = {r: j for j, r in enumerate(regions)}
            means, got = region_means(
                emb, np.array([pos[r] for r in sub.region.tolist()]), len(regions)
            )
            vec[got] = means[got]
        for j, pk in enumerate(pks):  # an unchanged modality keeps its stored vector
            if not changed[j] and has[j] and pk in old[kind] and not old[kind][pk][1]:
                vec[j] = old[kind][pk][0]
        visual[kind] = (vec, has)
    return visual


def _inputs(
    session: Session,
    job: _Job,
    visual: dict[str, tuple[np.ndarray, np.ndarray]],
    show_progress: bool | None,
    pending: list[Any],
) -> RegionInputs:
    """The regions' inputs: ``visual``, and their POI texts (from the store's cache: only new
    texts are encoded, their cache rows go to ``pending``), counts and mobility."""
    data, net, config, rows = job.data, job.model.net, job.model.config, job.rows
    encoder = TextEncoder(config.get("text_model", "all-MiniLM-L6-v2"))
    text = poi_text_means(
        session,
        data,
        encoder,
        int(config.get("text_batch_size", 64)),
        show_progress,
        pending,
    )
    counts, mobility = count_inputs(data, net)
    return RegionInputs(
        visual,
        (text[0][rows], text[1][rows]),
        None if counts is None else counts[rows],
        None if mobility is None else (mobility[0][rows], mobility[1][rows]),
    )


def _write(
    session: Session, job: _Job, result: RegionEmbeddings, pending: list[Any]
) -> tuple[int, dict[str, int]]:
    """Write the changed kinds of the regions under a new revision; returns the revision and
    the rows written per kind."""
    changed, mv = job.changed, job.model.mv
    ok = ~result.imputed["fused"]  # no image at all: nothing is fused; left unembedded
    stale_fused = np.array([pk not in job.old["fused"] for pk in job.pks], dtype=bool)
    fused_reads = list(job.model.modalities) if job.model.net.fusion else list(VISUAL)
    write = {
        "remote": changed["remote"] & ok,
        "street": changed["street"] & ok,
        "poi": changed["poi"] & ok,
        "fused": (np.any([changed[m] for m in fused_reads], axis=0) | stale_fused) & ok,
    }
    rev = Revision(operation="reembed", city_id=job.data.city.id, summary={"model_version": mv})
    session.add(rev)
    session.add_all(pending)
    session.flush()
    recomputed = write_region_embeddings(session, job.pks, mv, result, rev.id, kinds=write)
    rev.summary = {"model_version": mv, "regions": len(job.regions), "recomputed": recomputed}
    session.flush()
    return rev.id, recomputed


def neighbours(
    session: Session, index: Any, vectors: dict[str, np.ndarray], k: int = 10
) -> dict[str, list[str]]:
    """Top-k neighbours (region ids, the region itself left out) of some vectors, searched in
    ``index`` exactly as it stands (no catch-up: this is how it was before a change)."""
    if not vectors:
        return {}
    names = list(vectors)
    q = np.stack([vectors[n] for n in names]).astype(np.float32)
    _, ids = index.search_snapshot(q, k + 1)
    hits = [int(p) for p in ids[ids >= 0]]  # only these regions' ids are read
    pk_to_id: dict[int, str] = dict(
        rows_of(session, select(Region.id, Region.region_id), Region.id, hits)
    )
    out = {}
    for name, row in zip(names, ids, strict=True):
        found = [pk_to_id.get(int(i), str(int(i))) for i in row if i >= 0]
        out[name] = [f for f in found if f != name][:k]
    return out


def drift_report(
    old: dict[str, np.ndarray],
    new: dict[str, np.ndarray],
    before: dict[str, list[str]],
    after: dict[str, list[str]],
) -> list[dict[str, Any]]:
    """Per re-embedded region: how far its fused vector moved (cosine distance) and how its
    top-10 neighbours changed."""
    rows = []
    for rid in sorted(new):
        entry: dict[str, Any] = {
            "region_id": rid,
            "cosine_distance": None,
            "neighbours_kept": None,
            "neighbours_added": [],
            "neighbours_removed": [],
        }
        if rid in old:
            a, b = old[rid], new[rid]
            denom = float(np.linalg.norm(a) * np.linalg.norm(b)) or 1.0
            entry["cosine_distance"] = round(1.0 - float(a @ b) / denom, 6)
        if rid in before and rid in after:
            b4, af = before[rid], after[rid]
            entry["neighbours_kept"] = len(set(b4) & set(af))
            entry["neighbours_added"] = [r for r in af if r not in b4]
            entry["neighbours_removed"] = [r for r in b4 if r not in af]
        rows.append(entry)
    return rows


class ReembedOptions(TypedDict, total=False):
    """The keyword arguments of :func:`reembed`: which regions, with which model version."""

    model_version: int | None
    region_ids: list[str] | None
    since: int | None
    all_regions: bool
    show_progress: bool | None


def reembed_and_report(
    engine: Any, index_dir: Any, city: str, **options: Unpack[ReembedOptions]
) -> dict[str, Any]:
    """The whole ``musecl reembed``: re-embed in one transaction, commit, then update the
    FAISS index in place and build the drift report. A crash before the commit leaves the old
    embeddings; a crash after it leaves an index that the next open catches up."""
    from musecl_store.search.index import RegionIndex
    from musecl_store.store.engine import transaction

    with transaction(engine, write=True) as session:
        mv = resolve_model_version(session, city, options.get("model_version"))
        index = RegionIndex.open(session, index_dir, mv)  # caught up: the state before
        chosen: ReembedOptions = {**options, "model_version": mv}
        result = reembed(session, city, **chosen)
        before = neighbours(session, index, result.old_fused)
    faults.point("reembed:committed")
    report: list[dict[str, Any]] = []
    if result.revision is not None:
        with transaction(engine) as session:
            index.refresh(session)  # remove and re-add the changed ids, restamp
            faults.point("reembed:index_updated")
            # the re-embedded regions' new vectors, as indexed (unit length: the drift is a
            # cosine), not the whole city's
            mat = index.vectors(np.array(result.region_pks, dtype=np.int64))
            new = dict(zip(result.regions, mat, strict=True))
            after = neighbours(session, index, new)
        report = drift_report(result.old_fused, new, before, after)
    return {**result.to_dict(), "index": index.status(), "drift": report}
