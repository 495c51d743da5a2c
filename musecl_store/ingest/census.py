"""Census layers onto regions by area-weighted interpolation, computed in SQL.

Intersections are measured in an equal-area projection (EPSG:6933, WGS 84 / EASE-Grid 2.0)
by the database itself, PostGIS or SpatiaLite. With a_rt the area of region r ∩ tract t
and a_t the area of tract t:

- an **extensive** field (a count, e.g. population) is shared out by area:
  v_r = Σ_t v_t · a_rt / a_t
- an **intensive** field (a rate or median, e.g. income) is the area-weighted mean of the
  tracts that overlap the region and have a value: v_r = Σ_t v_t · a_rt / Σ_t a_rt

The results go to ``indicators`` with source ``census:<layer>`` under a new revision,
replacing that layer's earlier values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Float, cast, delete, func, insert, select
from sqlalchemy.orm import Session

from musecl_store.errors import MuseclError
from musecl_store.store import dialect
from musecl_store.store.chunks import chunked
from musecl_store.store.cities import get_city
from musecl_store.store.tables import CensusFeature, CensusLayer, Indicator, Region, Revision

EQUAL_AREA_SRID = 6933


class CensusError(MuseclError, LookupError):
    """An unknown layer or field."""


@dataclass
class CensusJoin:
    """What a join of ``layer`` onto ``city`` wrote, under store revision ``revision``."""

    city: str
    layer: str
    extensive: list[str]
    """The fields shared out by area (counts)."""
    intensive: list[str]
    """The fields averaged by area (rates, medians)."""
    regions: int
    """How many regions got a value."""
    values: int
    """How many indicator values were written (source ``census:<layer>``)."""
    revision: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def join_layer(
    session: Session,
    city: str,
    layer_name: str,
    *,
    extensive: list[str] | None = None,
    intensive: list[str] | None = None,
) -> CensusJoin:
    """Interpolate the named numeric fields of a census layer onto the city's regions.

    Raises:
        CensusError: unknown layer or fields (the message lists the known ones), or no field
            named (each must be declared extensive or intensive).
    """
    c = get_city(session, city)
    layer = _layer(session, c.id, city, layer_name)
    extensive, intensive = list(extensive or []), list(intensive or [])
    _check_fields(layer, layer_name, extensive, intensive)
    pairs = _overlaps(session, c.id, layer.id)
    rev = Revision(operation="census", city_id=c.id, summary={"layer": layer_name})
    session.add(rev)
    session.flush()
    source = f"census:{layer_name}"
    session.execute(
        delete(Indicator).where(
            Indicator.source == source,
            Indicator.region_pk.in_(select(Region.id).where(Region.city_id == c.id)),
        )
    )
    written = 0
    regions: set[int] = set()
    for field, is_extensive in [(f, True) for f in extensive] + [(f, False) for f in intensive]:
        rows = _interpolate(session, pairs, field, is_extensive, source)
        for chunk in chunked(rows):
            session.execute(insert(Indicator), chunk)
        written += len(rows)
        regions.update(r["region_pk"] for r in rows)
    rev.summary = {
        "layer": layer_name,
        "extensive": extensive,
        "intensive": intensive,
        "values": written,
    }
    session.flush()
    return CensusJoin(city, layer_name, extensive, intensive, len(regions), written, rev.id)


def _layer(session: Session, city_id: int, city: str, layer_name: str) -> CensusLayer:
    layer = session.scalar(
        select(CensusLayer).where(CensusLayer.city_id == city_id, CensusLayer.name == layer_name)
    )
    if layer is None:
        known = session.scalars(
            select(CensusLayer.name).where(CensusLayer.city_id == city_id)
        ).all()
        raise CensusError(
            f"city {city!r} has no census layer {layer_name!r}; it has "
            f"{', '.join(known) if known else 'none'} (census/<layer>.geojson)"
        )
    return layer


def _check_fields(
    layer: CensusLayer, layer_name: str, extensive: list[str], intensive: list[str]
) -> None:
    """Each field named once, as extensive or intensive, and a numeric field of the layer."""
    if not extensive and not intensive:
        # Guessing would silently give wrong numbers (a count averaged, a median summed).
        raise CensusError(
            f"say which fields of layer {layer_name!r} are counts (extensive, shared out by "
            f"area) and which are rates or averages (intensive, area-weighted mean); its "
            f"numeric fields are {', '.join(layer.fields)}"
        )
    both = set(extensive) & set(intensive)
    if both:
        raise CensusError(
            f"field(s) {', '.join(sorted(both))} cannot be both extensive and intensive"
        )
    unknown = [f for f in extensive + intensive if f not in layer.fields]
    if unknown:
        raise CensusError(
            f"layer {layer_name!r} has no numeric field(s) {', '.join(unknown)}; "
            f"its numeric fields are {', '.join(layer.fields)}"
        )


def _overlaps(session: Session, city_id: int, layer_id: int) -> Any:
    """Each (region, tract) pair that intersects, with the equal-area size of the
    intersection (``inter``) and of the tract (``tract_area``), as a subquery."""
    name = dialect.name(session)
    region_ea = func.ST_Transform(Region.geom, EQUAL_AREA_SRID)
    tract_ea = func.ST_Transform(CensusFeature.geom, EQUAL_AREA_SRID)
    return (
        select(
            Region.id.label("region_pk"),
            CensusFeature.id.label("feature_id"),
            func.ST_Area(func.ST_Intersection(region_ea, tract_ea)).label("inter"),
            func.ST_Area(tract_ea).label("tract_area"),
        )
        .join(
            CensusFeature,
            dialect.index_join(
                "census_features", CensusFeature.geom, CensusFeature.id, Region.geom, name
            ),
        )
        .where(
            Region.city_id == city_id,
            CensusFeature.layer_id == layer_id,
            func.ST_Intersects(Region.geom, CensusFeature.geom),
        )
        .subquery()
    )


def _interpolate(
    session: Session, pairs: Any, field: str, is_extensive: bool, source: str
) -> list[dict[str, Any]]:
    """The indicator rows of one field: per region, the tracts' values shared out by area
    (extensive) or their area-weighted mean (intensive)."""
    value = cast(CensusFeature.properties[field].as_float(), Float)
    weight = pairs.c.inter / pairs.c.tract_area if is_extensive else pairs.c.inter
    agg: Any = func.sum(value * weight)
    if not is_extensive:
        agg = agg / func.nullif(func.sum(pairs.c.inter), 0)
    stmt = (
        select(pairs.c.region_pk, agg.label("v"))
        .join(CensusFeature, CensusFeature.id == pairs.c.feature_id)
        .where(value.is_not(None), pairs.c.inter > 0)
        .group_by(pairs.c.region_pk)
    )
    return [
        {"region_pk": pk, "name": field, "value": float(v), "source": source}
        for pk, v in session.execute(stmt).all()
        if v is not None
    ]
