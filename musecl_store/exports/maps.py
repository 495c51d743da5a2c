"""Choropleth PNGs of one value per region: an indicator, a prediction, or the similarity to
a query region. Drawn with Pillow (no plotting stack): an equirectangular projection scaled
by cos(latitude), a perceptual colour ramp, regions without a value in grey, and a legend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from geoalchemy2.shape import to_shape
from PIL import Image, ImageDraw, ImageFont
from sqlalchemy import select
from sqlalchemy.orm import Session

from musecl_store.errors import MuseclError
from musecl_store.store.cities import get_city
from musecl_store.store.tables import Indicator, Prediction, Region
from musecl_store.store.vectors import load_embeddings
from musecl_store.store.versions import resolve as resolve_model_version

# A few stops of viridis (public domain colour map): low = dark purple, high = yellow.
_RAMP = np.array(
    [
        [68, 1, 84],
        [72, 40, 120],
        [62, 74, 137],
        [49, 104, 142],
        [38, 130, 142],
        [31, 158, 137],
        [53, 183, 121],
        [109, 205, 89],
        [180, 222, 44],
        [253, 231, 37],
    ],
    dtype=float,
)
NO_DATA = (200, 200, 200)


class MapError(MuseclError, ValueError):
    """Nothing to draw, or not exactly one thing to draw."""


def colour(t: float) -> tuple[int, int, int]:
    """The ramp at t in [0, 1]."""
    x = min(max(t, 0.0), 1.0) * (len(_RAMP) - 1)
    i = min(int(x), len(_RAMP) - 2)
    c = _RAMP[i] + (x - i) * (_RAMP[i + 1] - _RAMP[i])
    return int(c[0]), int(c[1]), int(c[2])


@dataclass
class MapResult:
    path: str
    title: str
    regions: int
    with_value: int
    vmin: float
    vmax: float
    query: str | None = None
    top: list[str] | None = None  # the k most similar regions, outlined (similar_to maps)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def values_for(
    session: Session,
    city: str,
    *,
    indicator: str | None = None,
    prediction: str | None = None,
    similar_to: str | None = None,
    model_version: int | None = None,
) -> tuple[str, dict[str, float]]:
    """(title, region_id -> value) for exactly one of the three sources."""
    if sum(v is not None for v in (indicator, prediction, similar_to)) != 1:
        raise MapError("map exactly one of --indicator, --prediction or --similar-to")
    c = get_city(session, city)
    if indicator is not None or prediction is not None:
        table, column, label, missing = (
            (
                Indicator,
                Indicator.name == indicator,
                f"{city}: {indicator}",
                f"city {city!r} has no values of indicator {indicator!r}",
            )
            if indicator is not None
            else (
                Prediction,
                Prediction.regressor == prediction,
                f"{city}: predicted by {prediction}",
                f"regressor {prediction!r} has no predictions for city {city!r}",
            )
        )
        rows = session.execute(
            select(Region.region_id, table.value)
            .join(table, table.region_pk == Region.id)
            .where(Region.city_id == c.id, column)
        ).all()
        if not rows:
            raise MapError(missing)
        return label, {r: float(v) for r, v in rows}
    mv = resolve_model_version(session, city, model_version)
    ids, mat = load_embeddings(session, mv, "fused", c.id)
    if similar_to not in ids:
        raise MapError(f"city {city!r} has no fused embedding for region {similar_to!r}")
    normed = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
    sims = normed @ normed[ids.index(similar_to)]
    return (
        f"{city}: cosine similarity to region {similar_to} (model version {mv}, fused)",
        dict(zip(ids, sims.tolist(), strict=True)),
    )


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def draw(
    session: Session,
    city: str,
    out: str | Path,
    *,
    width: int = 900,
    k: int = 10,
    **source: Any,
) -> MapResult:
    """Draw the choropleth to ``out`` (PNG). ``source``: see :func:`values_for`. A
    similarity map marks the query region (black outline and dot) and outlines its ``k``
    most similar regions in red."""
    title, values = values_for(session, city, **source)
    query = source.get("similar_to")
    top: list[str] = []
    if query is not None:
        others = sorted(((v, r) for r, v in values.items() if r != query), key=lambda t: -t[0])
        top = [r for _, r in others[:k]]
    c = get_city(session, city)
    geoms = [
        (rid, to_shape(g))
        for rid, g in session.execute(
            select(Region.region_id, Region.geom).where(Region.city_id == c.id)
        ).all()
    ]
    minx = min(g.bounds[0] for _, g in geoms)
    miny = min(g.bounds[1] for _, g in geoms)
    maxx = max(g.bounds[2] for _, g in geoms)
    maxy = max(g.bounds[3] for _, g in geoms)
    kx = math.cos(math.radians((miny + maxy) / 2))
    margin, legend_h, title_h = 20, 70 if query else 50, 36
    scale = (width - 2 * margin) / max((maxx - minx) * kx, 1e-12)
    height = int((maxy - miny) * scale) + 2 * margin + legend_h + title_h
    img = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(img)
    vals = np.array(list(values.values()))
    vmin, vmax = float(np.nanmin(vals)), float(np.nanmax(vals))
    span = vmax - vmin if vmax > vmin else 1.0

    def px(x: float, y: float) -> tuple[float, float]:
        return margin + (x - minx) * kx * scale, title_h + margin + (maxy - y) * scale

    for rid, geom in geoms:
        v = values.get(rid)
        fill = NO_DATA if v is None or not math.isfinite(v) else colour((v - vmin) / span)
        for poly in getattr(geom, "geoms", [geom]):
            pen.polygon(
                [px(x, y) for x, y in poly.exterior.coords], fill=fill, outline=(255, 255, 255)
            )
    shapes = dict(geoms)
    for rid, colour_, w in [*((r, (220, 20, 60), 3) for r in top), (query, (0, 0, 0), 4)]:
        if rid is None or rid not in shapes:
            continue
        for poly in getattr(shapes[rid], "geoms", [shapes[rid]]):
            pen.line([px(x, y) for x, y in poly.exterior.coords], fill=colour_, width=w)
    if query is not None and query in shapes:
        cx, cy = px(shapes[query].centroid.x, shapes[query].centroid.y)
        pen.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=(0, 0, 0))
    font = _font(13)
    pen.text((margin, 8), title, fill="black", font=_font(17))
    bar_y = height - legend_h + 10
    bar_w = width - 2 * margin
    for i in range(bar_w):
        pen.line(
            [(margin + i, bar_y), (margin + i, bar_y + 12)], fill=colour(i / max(bar_w - 1, 1))
        )
    pen.text((margin, bar_y + 16), f"{vmin:.4g}", fill="black", font=font)
    label = f"{vmax:.4g}"
    right = width - margin - pen.textlength(label, font=font)
    pen.text((right, bar_y + 16), label, fill="black", font=font)
    if query is not None:
        y = bar_y + 36
        pen.rectangle([margin, y, margin + 14, y + 12], outline=(0, 0, 0), width=3)
        pen.text((margin + 20, y - 1), f"query region {query}", fill="black", font=font)
        x = margin + 40 + pen.textlength(f"query region {query}", font=font)
        pen.rectangle([x, y, x + 14, y + 12], outline=(220, 20, 60), width=3)
        pen.text((x + 20, y - 1), f"its {len(top)} most similar regions", fill="black", font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return MapResult(
        str(out),
        title,
        len(geoms),
        sum(1 for r, _ in geoms if r in values),
        vmin,
        vmax,
        query,
        top if query is not None else None,
    )
