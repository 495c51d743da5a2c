"""Read-only summaries of what the store holds (``musecl info``, ``musecl cities``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from musecl_store.errors import CityNotFoundError
from musecl_store.store.tables import (
    CensusFeature,
    CensusLayer,
    City,
    Image,
    Indicator,
    Mobility,
    OdFlow,
    Poi,
    Region,
    Revision,
)


def store_revision(session: Session) -> int:
    """The newest revision of the whole store (0 for an empty store)."""
    return session.scalar(select(func.coalesce(func.max(Revision.id), 0))) or 0


def get_city(session: Session, name: str) -> City:
    """The city called ``name``; raises :class:`CityNotFoundError` listing the known ones."""
    city = session.scalar(select(City).where(City.name == name))
    if city is None:
        raise CityNotFoundError(name, list(session.scalars(select(City.name).order_by(City.name))))
    return city


def city_info(session: Session, name: str) -> dict[str, Any]:
    """Counts of everything the store holds for one city."""
    city = get_city(session, name)
    cid = city.id
    in_city = Region.city_id == cid

    def count(stmt: Any) -> int:
        return int(session.scalar(stmt) or 0)

    images = dict(
        session.execute(
            select(Image.kind, func.count()).where(Image.city_id == cid).group_by(Image.kind)
        ).all()
    )
    trips_out, trips_in = session.execute(
        select(
            func.coalesce(func.sum(Mobility.outflow), 0),
            func.coalesce(func.sum(Mobility.inflow), 0),
        )
        .join(Region, Region.id == Mobility.region_pk)
        .where(in_city)
    ).one()
    indicators = dict(
        session.execute(
            select(Indicator.name, func.count())
            .join(Region, Region.id == Indicator.region_pk)
            .where(in_city)
            .group_by(Indicator.name)
            .order_by(Indicator.name)
        ).all()
    )
    census = dict(
        session.execute(
            select(CensusLayer.name, func.count(CensusFeature.id))
            .join(CensusFeature, CensusFeature.layer_id == CensusLayer.id, isouter=True)
            .where(CensusLayer.city_id == cid)
            .group_by(CensusLayer.name)
            .order_by(CensusLayer.name)
        ).all()
    )
    return {
        "city": city.name,
        "crs": city.crs,
        "h3_resolution": city.h3_resolution,
        "source": city.source_path,
        "regions": count(select(func.count()).select_from(Region).where(in_city)),
        "pois": count(select(func.count()).select_from(Poi).where(Poi.city_id == cid)),
        "images": {"remote": int(images.get("remote", 0)), "street": int(images.get("street", 0))},
        "trips": count(
            select(func.coalesce(func.sum(OdFlow.trips), 0))
            .join(Region, Region.id == OdFlow.origin_pk)
            .where(in_city)
        ),
        "trips_out": int(trips_out),
        "trips_in": int(trips_in),
        "regions_with": {
            "pois": count(
                select(func.count(func.distinct(Poi.region_pk))).where(Poi.city_id == cid)
            ),
            "remote": _regions_with_images(session, cid, "remote"),
            "street": _regions_with_images(session, cid, "street"),
            "trips": count(
                select(func.count())
                .select_from(Mobility)
                .join(Region, Region.id == Mobility.region_pk)
                .where(in_city)
            ),
        },
        "indicators": {k: int(v) for k, v in indicators.items()},
        "census_layers": {k: int(v) for k, v in census.items()},
        "revision": city.revision,
        "store_revision": store_revision(session),
    }


def _regions_with_images(session: Session, city_id: int, kind: str) -> int:
    return int(
        session.scalar(
            select(func.count(func.distinct(Image.region_pk))).where(
                Image.city_id == city_id, Image.kind == kind
            )
        )
        or 0
    )


def list_cities(session: Session) -> list[dict[str, Any]]:
    """One line per city: name, region count, revision, CRS and where its bundle is."""
    n_regions = select(Region.city_id, func.count().label("n")).group_by(Region.city_id).subquery()
    rows = session.execute(
        select(City, func.coalesce(n_regions.c.n, 0))
        .join(n_regions, n_regions.c.city_id == City.id, isouter=True)
        .order_by(City.name)
    )
    return [
        {
            "city": c.name,
            "regions": int(n),
            "revision": c.revision,
            "crs": c.crs,
            "h3_resolution": c.h3_resolution,
            "source": c.source_path,
            "updated_at": c.updated_at.isoformat() if c.updated_at else None,
        }
        for c, n in rows
    ]
