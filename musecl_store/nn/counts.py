"""Per-region count features: what a region's POI mix, POI volume and trips say, as numbers.

Both depend on the region's own data alone (its POIs; its in/out counts, O/D row and O/D
column), so re-embedding one region never needs another's.

POI counts, with the model's category vocabulary c_1..c_C (fixed when the model is trained;
a category it has never seen still counts in the total):
    x_poi = (log1p n_c1, ..., log1p n_cC, log1p n_total)

Mobility, with in/out the trips ending/starting in the region, O/D its O/D row and column:
    x_mob = (log1p in, log1p out, in / (in + out), log1p #destinations, log1p #origins,
             trips within the region / (in + out))
A region without any trip has no mobility features (masked, never fed as zeros).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

MOBILITY_FEATURES = ("log_in", "log_out", "in_share", "log_destinations", "log_origins", "intra")


def poi_count_features(
    n_regions: int,
    poi_region: np.ndarray,
    poi_category: Sequence[str],
    vocabulary: Sequence[str],
) -> np.ndarray:
    """(n_regions, len(vocabulary) + 1) float32: log1p counts per category, then the total."""
    code = {c: j for j, c in enumerate(vocabulary)}
    out = np.zeros((n_regions, len(vocabulary) + 1), dtype=np.float64)
    cols = np.array([code.get(c, -1) for c in poi_category], dtype=np.int64)
    region = np.asarray(poi_region, dtype=np.int64)
    known = cols >= 0
    np.add.at(out, (region[known], cols[known]), 1.0)
    out[:, -1] = np.bincount(region, minlength=n_regions)[:n_regions]
    return np.log1p(out).astype(np.float32)


def mobility_features(
    inflow: np.ndarray, outflow: np.ndarray, od: sparse.spmatrix
) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 6) float32, has (n,) bool): see the module docstring."""
    inflow = np.asarray(inflow, dtype=np.float64)
    outflow = np.asarray(outflow, dtype=np.float64)
    total = inflow + outflow
    has = total > 0
    od = sparse.csr_matrix(od, dtype=np.float64)
    n_dest = np.diff(od.indptr)
    n_orig = np.diff(od.tocsc().indptr)
    intra = od.diagonal()
    safe = np.where(has, total, 1.0)
    feats = np.column_stack(
        [
            np.log1p(inflow),
            np.log1p(outflow),
            inflow / safe,
            np.log1p(n_dest),
            np.log1p(n_orig),
            intra / safe,
        ]
    )
    feats[~has] = 0.0
    return feats.astype(np.float32), has
