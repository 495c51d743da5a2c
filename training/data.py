"""What a training run reads: the city checked for what MuseCL needs, the digest of its
training inputs (the run's identity), each region's contrastive positives, and the split of
the regions into training and validation."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store.embedding.inputs import CityData
from musecl_store.errors import MuseclError
from musecl_store.hashing import digest
from musecl_store.nn.fusion import VISUAL
from musecl_store.store.tables import Region
from training import similarity
from training.config import TrainConfig

# The per-modality content hashes that training reads (geometry and indicators are not
# inputs: changing only them keeps the run).
TRAINED_HASHES = (Region.hash_poi, Region.hash_remote, Region.hash_street, Region.hash_mobility)


class TrainingError(MuseclError, ValueError):
    """The city cannot be trained on as it is (the message says why and what to do)."""


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


def split_regions(n: int, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The regions trained on and those held out for validation (``val_fraction``), sorted;
    drawn from the run's seed."""
    order = np.random.default_rng(config.seed).permutation(n)
    n_val = round(config.val_fraction * n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
