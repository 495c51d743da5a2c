"""Small synthetic images whose pixels depend on the latent factors.

Remote-sensing tiles show built-up density, greenery and industry (roof colours, hint of
affluence); street views show affluence (facades, litter), shops (commercial), neon
(nightlife) and trees (greenery). Neither shows everything.
"""

from __future__ import annotations

import numpy as np

SIZE = 64


def _sig(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _rect(img: np.ndarray, x0: int, y0: int, w: int, h: int, colour: np.ndarray) -> None:
    img[max(y0, 0) : max(y0 + h, 0), max(x0, 0) : max(x0 + w, 0)] = colour


def remote_tile(f: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A 64x64 RGB top-down tile for a region with factor values ``f``."""
    green = _sig(1.3 * f["greenery"] - 0.6 * f["density"])
    ground = green * np.array([62, 122, 48]) + (1 - green) * np.array([168, 158, 138])
    img = ground + rng.normal(0, 10, (SIZE, SIZE, 3))
    for _ in range(rng.poisson(1 + 3 * _sig(f["density"] + 0.5 * f["commercial"]))):
        pos, width = int(rng.integers(0, SIZE)), int(rng.integers(2, 4))
        if rng.random() < 0.5:
            _rect(img, 0, pos, SIZE, width, np.array([88, 88, 92]))
        else:
            _rect(img, pos, 0, width, SIZE, np.array([88, 88, 92]))
    p_ind = _sig(2.2 * f["industry"] - 1.2)
    p_aff = _sig(1.2 * f["affluence"])
    big = 5 + int(12 * _sig(2 * f["industry"] - 1))
    for _ in range(rng.poisson(2 + 22 * _sig(1.4 * f["density"]))):
        u = rng.random()
        if u < p_ind:
            colour, w, h = (
                np.array([205, 207, 212]),
                rng.integers(big // 2 + 3, big + 6),
                rng.integers(big // 2 + 3, big + 6),
            )
        elif rng.random() < p_aff:
            colour, w, h = np.array([172, 84, 62]), rng.integers(3, 8), rng.integers(3, 8)
        else:
            colour, w, h = np.array([104, 98, 94]), rng.integers(3, 7), rng.integers(3, 7)
        _rect(
            img,
            int(rng.integers(-4, SIZE)),
            int(rng.integers(-4, SIZE)),
            int(w),
            int(h),
            colour + rng.normal(0, 8, 3),
        )
    if rng.random() < 0.06:  # a pond or river bend
        cx, cy = rng.integers(0, SIZE, 2).tolist()
        r = int(rng.integers(5, 14))
        yy, xx = np.ogrid[:SIZE, :SIZE]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = np.array([52, 92, 150])
    return np.clip(img, 0, 255).astype(np.uint8)


def street_view(f: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A 64x64 RGB street-level view for a region with factor values ``f``."""
    img = np.empty((SIZE, SIZE, 3))
    img[:] = np.array([150, 190, 230]) + rng.normal(0, 12, 3)  # sky
    skyline = int(SIZE * (0.55 - 0.25 * _sig(0.8 * f["density"]) + rng.normal(0, 0.05)))
    a = _sig(1.6 * f["affluence"])
    facade = a * np.array([214, 204, 182]) + (1 - a) * np.array([112, 100, 96])
    road_top = int(SIZE * 0.84)
    x = 0
    while x < SIZE:  # a row of buildings of varying height
        w = int(rng.integers(8, 20))
        top = max(2, skyline + int(rng.integers(-8, 9)))
        _rect(img, x, top, w, road_top - top, facade + rng.normal(0, 10, 3))
        for wy in range(top + 3, road_top - 8, 6):  # windows
            for wx in range(x + 2, x + w - 2, 5):
                _rect(img, wx, wy, 2, 3, np.array([60, 70, 90]) * (0.6 + 0.8 * a))
        x += w
    for _ in range(rng.poisson(12 * _sig(-1.5 * f["affluence"] - 0.5))):  # litter and graffiti
        _rect(
            img,
            int(rng.integers(0, SIZE)),
            int(rng.integers(road_top - 16, road_top)),
            int(rng.integers(1, 4)),
            int(rng.integers(1, 3)),
            rng.integers(0, 255, 3),
        )
    for _ in range(rng.poisson(4 * _sig(1.6 * f["commercial"] - 0.3))):  # shop signs
        colour = np.array([[220, 40, 40], [240, 200, 30], [30, 90, 210]][int(rng.integers(0, 3))])
        _rect(
            img,
            int(rng.integers(0, SIZE - 8)),
            int(rng.integers(road_top - 16, road_top - 8)),
            int(rng.integers(6, 12)),
            3,
            colour,
        )
    for _ in range(rng.poisson(3 * _sig(1.8 * f["nightlife"] - 1.0))):  # neon
        colour = np.array([[250, 40, 220], [40, 240, 240]][int(rng.integers(0, 2))])
        _rect(
            img,
            int(rng.integers(0, SIZE - 4)),
            int(rng.integers(skyline, road_top - 4)),
            int(rng.integers(2, 5)),
            int(rng.integers(2, 6)),
            colour,
        )
    yy, xx = np.ogrid[:SIZE, :SIZE]
    for _ in range(rng.poisson(5 * _sig(1.5 * f["greenery"]))):  # trees
        cx, cy, r = (
            int(rng.integers(0, SIZE)),
            int(rng.integers(road_top - 20, road_top - 4)),
            int(rng.integers(3, 7)),
        )
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = np.array([40, 110, 40]) + rng.normal(
            0, 10, 3
        )
    _rect(img, 0, road_top, SIZE, SIZE - road_top, np.array([70, 70, 74]))
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
