"""A read bundle's content hash per region and modality (the columns ``Region.hash_*``): what
the plan compares with the store to find what changed.

Work per region runs a block of regions at a time, so that no Python list grows with the city.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise

import numpy as np

from musecl_store.bundle.reader import Bundle
from musecl_store.hashing import digest, digest_bytes
from musecl_store.store.tables import IMAGE_KINDS, MODALITIES

_BLOCK = 10_000  # regions (or rows) turned into Python objects at a time


def hash_set(parts: Iterable[str]) -> str:
    """Order-independent hash of a region's rows for one modality."""
    return digest(*sorted(parts))


EMPTY = hash_set([])
"""The hash of a modality a region has no rows of."""

ALL = (1 << len(MODALITIES)) - 1
"""Every modality's bit set (bit k: ``MODALITIES[k]``)."""


def bit(modality: str) -> int:
    return 1 << MODALITIES.index(modality)


class RegionHashes(Sequence[dict[str, str]]):
    """Content hash per region and modality (the columns ``Region.hash_*``): item ``i`` is
    region ``i``'s {modality: hex digest}. Held as 16 raw bytes a hash (~100 bytes a region
    in all, where a dict of hex strings takes ~900)."""

    def __init__(self, raw: dict[str, bytes]):
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw["geometry"]) // 16

    def hex(self, i: int, modality: str) -> str:
        return self.raw[modality][16 * i : 16 * i + 16].hex()

    def __getitem__(self, i: int) -> dict[str, str]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return {m: self.hex(i, m) for m in MODALITIES}


def _set_hash(parts: Iterable[str]) -> bytes:
    """:func:`hash_set` as raw bytes."""
    return bytes.fromhex(hash_set(parts))


def _grouped_hashes(n: int, region: np.ndarray, hashes: np.ndarray) -> bytes:
    """Per region, the hash of the set of its rows' content hashes (``hashes``: (m, 16) raw
    bytes, ``region``: each row's region), as :func:`hash_set` of their hex would give."""
    out = bytearray(bytes.fromhex(EMPTY) * n)
    if len(region) == 0:
        return bytes(out)
    hi = np.ascontiguousarray(hashes[:, :8]).view(">u8").ravel()
    lo = np.ascontiguousarray(hashes[:, 8:]).view(">u8").ravel()
    order = np.lexsort((lo, hi, region))  # by region, then by hash (= by hex)
    region, hashes = region[order], hashes[order]
    bounds = np.r_[np.flatnonzero(np.r_[True, region[1:] != region[:-1]]), len(region)]
    for start, end in _pairs(bounds):
        hexes = hashes[start:end].tobytes().hex()
        data = "".join(f"'{hexes[k : k + 32]}'\x1f" for k in range(0, len(hexes), 32))
        r = int(region[start])
        out[16 * r : 16 * r + 16] = hashlib.blake2b(data.encode(), digest_size=16).digest()
    return bytes(out)


def region_hashes(bundle: Bundle) -> RegionHashes:
    """Content hash per region and modality (the columns ``Region.hash_*``)."""
    n = len(bundle.regions)
    geometry = bytearray()
    for r in bundle.regions:
        geometry += digest_bytes(r.wkb, r.h3_cell)
    raw: dict[str, bytes] = {
        "geometry": bytes(geometry),
        "poi": _grouped_hashes(n, bundle.pois.region, bundle.pois.hashes),
    }
    for kind in IMAGE_KINDS:
        images: dict[int, list[str]] = defaultdict(list)
        for im in bundle.images:
            if im.kind == kind:
                images[im.region].append(im.content_hash)
        out = bytearray(bytes.fromhex(EMPTY) * n)
        for i, parts in images.items():
            out[16 * i : 16 * i + 16] = _set_hash(parts)
        raw[kind] = bytes(out)
    raw["mobility"], raw["indicators"] = _mobility_and_indicator_hashes(bundle)
    return RegionHashes(raw)


def _mobility_and_indicator_hashes(bundle: Bundle) -> tuple[bytes, bytes]:
    """Per region, the hash of its in/out counts and O/D entries, and of its indicators."""
    n = len(bundle.regions)
    ids = [r.region_id for r in bundle.regions]
    mob = bundle.mobility
    origin, dest, trips = mob.od_pairs()
    # an O/D entry counts for its origin and, when another region, for its destination
    other = np.flatnonzero(origin != dest)
    at = np.concatenate([origin, dest[other]])
    order = np.argsort(at, kind="stable")
    entries, at = np.concatenate([np.arange(len(origin)), other])[order], at[order]
    mobility, indicators = bytearray(), bytearray()
    table, names = bundle.indicators.table, bundle.indicators.names
    for a in range(0, n, _BLOCK):  # Python lists of a block of regions at a time
        b = min(a + _BLOCK, n)
        lo, hi = np.searchsorted(at, [a, b])
        block_at, block = at[lo:hi].tolist(), entries[lo:hi]
        o, d, c = origin[block].tolist(), dest[block].tolist(), trips[block].tolist()
        inflow, outflow = mob.inflow[a:b].tolist(), mob.outflow[a:b].tolist()
        k = 0
        for i in range(a, b):
            od: list[str] = []
            while k < len(block_at) and block_at[k] == i:
                od.append(f"{ids[o[k]]}>{ids[d[k]]}:{c[k]}")
                k += 1
            mobility += _set_hash([f"in={inflow[i - a]}", f"out={outflow[i - a]}", *od])
        for row in table[a:b].tolist():
            indicators += _set_hash(f"{k}={v!r}" for k, v in zip(names, row, strict=True) if v == v)
    return bytes(mobility), bytes(indicators)


def _pairs(bounds: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) of each group, from the groups' boundaries, a block at a time."""
    for a in range(0, len(bounds) - 1, _BLOCK):
        part = bounds[a : a + _BLOCK + 1].tolist()
        yield from pairwise(part)


def indexes(mask: np.ndarray) -> Iterator[int]:
    """The indexes where ``mask`` is true, as ints, made a block at a time."""
    for a in range(0, len(mask), _BLOCK):
        for i in np.flatnonzero(mask[a : a + _BLOCK]).tolist():
            yield a + i
