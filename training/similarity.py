"""Region-to-region similarities that pick contrastive pairs, kept sparse (top-k per region).

POI similarity. With c_i the vector of region i's POI counts per category,
    p_i = c_i / sum_k c_ik                          (its category distribution)
    sim_poi(i, j) = p_i . p_j / (|p_i| |p_j|)       (cosine similarity)

Mobility similarity. With in_i, out_i the trips ending and starting in region i and OD the
origin-destination matrix,
    f_i = (in_i, out_i) / (in_i + out_i)           (inflow/outflow profile)
    r_i = OD[i, :] / out_i,  c_i = OD[:, i] / in_i  (where its trips go, where they come from)
    v_i = f_i  (+ r_i + c_i concatenated when the O/D matrix is used)
    sim_mob(i, j) = v_i . v_j / (|v_i| |v_j|)

A region whose vector is zero (no POIs, no trips) has no neighbours. Only the top-k
neighbours (j != i, similarity > 0) of each region are kept; the similarity is computed in
row blocks of sparse products, so 100k regions never build an N x N dense matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

_BLOCK_CELLS = 1 << 24  # dense cells per block of the similarity (64 MB of float32)


def _normalise_rows(m: sparse.csr_matrix) -> sparse.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sparse.csr_matrix(sparse.diags(inv) @ m)


def cosine_topk(vectors: sparse.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of every row, excluding itself and zero similarities.

    Returns:
        (idx, sim), both (n, k); rows with fewer than k neighbours are padded with -1 / 0.
        Neighbours are sorted by decreasing similarity (ties by index).
    """
    v = _normalise_rows(sparse.csr_matrix(vectors, dtype=np.float64))
    n = v.shape[0]
    k_eff = min(k, max(n - 1, 0))
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.zeros((n, k), dtype=np.float32)
    if k_eff == 0:
        return idx, sim
    vt = v.T.tocsr()
    block = max(1, _BLOCK_CELLS // max(n, 1))
    for start in range(0, n, block):
        stop = min(start + block, n)
        s = np.asarray((v[start:stop] @ vt).todense())
        s[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # never itself
        s[s <= 1e-12] = -np.inf
        part = np.argpartition(-s, k_eff - 1, axis=1)[:, :k_eff]
        vals = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)
        part = np.take_along_axis(part, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        ok = np.isfinite(vals)
        idx[start:stop, :k_eff] = np.where(ok, part, -1)
        sim[start:stop, :k_eff] = np.where(ok, vals, 0.0)
    return idx, sim


def poi_profiles(
    n_regions: int,
    poi_region: Sequence[int] | np.ndarray,
    poi_category: Sequence[int],
    n_categories: int,
) -> sparse.csr_matrix:
    """The category distribution p_i of each region's POIs (rows of zeros for none)."""
    counts = sparse.csr_matrix(
        (np.ones(len(poi_region)), (np.asarray(poi_region), np.asarray(poi_category))),
        shape=(n_regions, n_categories),
    )
    totals = np.asarray(counts.sum(axis=1)).ravel()
    inv = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return sparse.csr_matrix(sparse.diags(inv) @ counts)


def mobility_profiles(
    inflow: np.ndarray, outflow: np.ndarray, od: sparse.spmatrix | None, use_od: bool = True
) -> sparse.csr_matrix:
    """The mobility vector v_i of each region (see the module docstring)."""
    inflow = np.asarray(inflow, dtype=np.float64)
    outflow = np.asarray(outflow, dtype=np.float64)
    total = inflow + outflow
    inv_t = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
    flows = sparse.csr_matrix(np.column_stack([inflow * inv_t, outflow * inv_t]))
    if not use_od or od is None:
        return flows
    od = sparse.csr_matrix(od, dtype=np.float64)
    inv_out = np.divide(1.0, outflow, out=np.zeros_like(outflow), where=outflow > 0)
    inv_in = np.divide(1.0, inflow, out=np.zeros_like(inflow), where=inflow > 0)
    rows = sparse.diags(inv_out) @ od
    cols = sparse.diags(inv_in) @ od.T
    return sparse.hstack([flows, rows, cols], format="csr")


def spatial_knn(lonlat: np.ndarray, k: int) -> np.ndarray:
    """The k nearest regions of each region by centroid distance: (n, k) indices, -1 padded.

    Lon/lat are mapped to a local equirectangular plane (km), accurate enough for neighbours
    within a city; an H3 tiling's 6 nearest are its ring-1 cells.
    """
    from scipy.spatial import cKDTree

    lonlat = np.asarray(lonlat, dtype=np.float64)
    n = len(lonlat)
    out = np.full((n, k), -1, dtype=np.int64)
    k_eff = min(k, n - 1)
    if k_eff <= 0:
        return out
    lat0 = np.radians(np.median(lonlat[:, 1]))
    xy = np.column_stack([lonlat[:, 0] * 111.32 * np.cos(lat0), lonlat[:, 1] * 110.574])
    _, idx = cKDTree(xy).query(xy, k=k_eff + 1)
    idx = np.asarray(idx).reshape(n, k_eff + 1)
    for i in range(n):  # drop the region itself (not always column 0 when centroids coincide)
        row = [int(j) for j in idx[i] if j != i][:k_eff]
        out[i, : len(row)] = row
    return out


def smooth(
    values: np.ndarray | sparse.spmatrix, knn: np.ndarray, passes: int, self_weight: float = 0.5
) -> sparse.csr_matrix:
    """Average each region's row with its spatial neighbours' (``passes`` times); sparse in,
    sparse out (a dense array is taken as it is).

    Regions of a neighbourhood tend to be alike (Tobler's first law), while one region's POI
    list or trip count is a small, noisy sample: smoothing trades a little spatial detail for
    a profile that says much more about the region's kind.
    """
    v = sparse.csr_matrix(values, dtype=np.float64)
    n = knn.shape[0]
    valid = knn >= 0
    cnt = valid.sum(axis=1)
    rows = np.repeat(np.arange(n), valid.sum(axis=1))
    weights = np.repeat((1 - self_weight) / np.maximum(cnt, 1), cnt)
    op = sparse.csr_matrix((weights, (rows, knn[valid])), shape=(n, n))
    op = op + sparse.diags(np.where(cnt > 0, self_weight, 1.0))
    for _ in range(passes):
        v = sparse.csr_matrix(op @ v)
    return v


def standardise(values: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Columns to mean 0 and standard deviation 1 (over ``rows`` where given)."""
    v = np.asarray(values, dtype=np.float64)
    ref = v if rows is None else v[rows]
    sd = ref.std(axis=0)
    return (v - ref.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def profiles(
    which: str,
    *,
    n: int,
    poi_region: np.ndarray,
    poi_category: list[str],
    inflow: np.ndarray,
    outflow: np.ndarray,
    od: sparse.spmatrix,
    use_od: bool = True,
) -> sparse.csr_matrix:
    """The profile whose cosine picks a region's positives (before smoothing).

    ``poi``: standardised log1p POI counts per category and in total (what kind of place and
    how much of it). ``mobility``: standardised mobility features (log volumes, in/out
    share, destinations, origins, trips within), plus the paper's O/D profile (where trips
    go, where they come from) when ``use_od``. A region without trips has zeros there.
    ``profile``: the POI counts and the mobility features side by side.
    """
    from musecl_store.nn.counts import mobility_features, poi_count_features

    if which == "poi":
        vocab = sorted(set(poi_category))
        x = standardise(poi_count_features(n, poi_region, poi_category, vocab))
        return sparse.csr_matrix(x)
    if which in ("mobility", "profile"):
        feats, has = mobility_features(inflow, outflow, od)
        x = standardise(feats, has)
        x[~has] = 0.0
        if which == "profile":  # what kind of place, how much of it, how busy
            vocab = sorted(set(poi_category))
            poi = standardise(poi_count_features(n, poi_region, poi_category, vocab))
            return sparse.csr_matrix(np.hstack([poi, x]))
        if not use_od:
            return sparse.csr_matrix(x)
        # the O/D part is a distribution (sums to 2 over its columns): no standardising
        return sparse.hstack(
            [sparse.csr_matrix(x), mobility_profiles(inflow, outflow, od)[:, 2:]], format="csr"
        )
    raise ValueError(f"unknown similarity {which!r}; use one of {', '.join(SIMILARITIES)}")


SIMILARITIES = ("poi", "mobility", "profile", "spatial")
