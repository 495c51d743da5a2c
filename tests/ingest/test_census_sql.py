"""Census interpolation against an independent computation, and the README's SQL, on both
backends."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from sqlalchemy import select, text

from musecl_store.downstream.regressors import fit, predict
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.ingest.census import CensusError, join_layer
from musecl_store.search.index import RegionIndex
from musecl_store.search.query import Query, similar
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.tables import Indicator, Region

README = Path(__file__).parents[2] / "README.md"


def test_area_weighted_interpolation_matches_an_independent_computation(
    engine, tiny_bundle: Path
) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        ingest_bundle(s, tiny_bundle)
    with transaction(engine) as s:
        with pytest.raises(CensusError, match=r"say which fields .* population"):
            join_layer(s, "tiny", "tracts")
        with pytest.raises(CensusError, match="no numeric field\\(s\\) tract_id"):
            join_layer(s, "tiny", "tracts", extensive=["tract_id"])
        with pytest.raises(CensusError, match="has no census layer 'districts'"):
            join_layer(s, "tiny", "districts", extensive=["population"])
        out = join_layer(s, "tiny", "tracts", extensive=["population"], intensive=["median_income"])
    assert out.regions == 6
    with transaction(engine) as s:
        got = {
            (rid, n): v
            for rid, n, v in s.execute(
                select(Region.region_id, Indicator.name, Indicator.value)
                .join(Indicator, Indicator.region_pk == Region.id)
                .where(Indicator.source == "census:tracts")
            ).all()
        }
    # the same by hand: project to EPSG:6933 with pyproj, measure with shapely
    t = Transformer.from_crs(4326, 6933, always_xy=True)

    def ea(g):  # type: ignore[no-untyped-def]
        return shapely.transform(g, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))

    regions = {
        f["properties"]["region_id"]: ea(shapely.geometry.shape(f["geometry"]))
        for f in json.loads((tiny_bundle / "regions.geojson").read_text())["features"]
    }
    tracts = [
        (f["properties"], ea(shapely.geometry.shape(f["geometry"])))
        for f in json.loads((tiny_bundle / "census" / "tracts.geojson").read_text())["features"]
    ]
    for rid, geom in regions.items():
        pop = sum(p["population"] * geom.intersection(t).area / t.area for p, t in tracts)
        assert got[(rid, "population")] == pytest.approx(pop, rel=1e-6)
        w = [
            (p["median_income"], geom.intersection(t).area)
            for p, t in tracts
            if p["median_income"] is not None and geom.intersection(t).area > 0
        ]
        if w:
            expect = sum(v * a for v, a in w) / sum(a for _, a in w)
            assert got[(rid, "median_income")] == pytest.approx(expect, rel=1e-6)
        else:
            assert (rid, "median_income") not in got  # no tract with a value overlaps it
    total = sum(v for (_, n), v in got.items() if n == "population")
    assert total == pytest.approx(12000, rel=1e-6)  # the tracts cover the regions exactly


@pytest.mark.slow
def test_the_readme_sql_runs_on_both_backends(backend, trained: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(backend.clone(trained))
    with transaction(engine) as s:
        join_layer(s, "demo-3", "tracts", extensive=["population"], intensive=["median_income"])
        reg = fit(s, "demo-3", "crime", head="ridge")
        predict(s, reg.id, "demo-3", all_regions=True)
        anchor = s.scalars(select(Region.region_id).order_by(Region.region_id)).all()[7]
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 3
    results = []
    with transaction(engine) as s:
        for sql in blocks:
            sql = sql.replace("'demo-0'", "'demo-3'").replace("'881f8ed955fffff'", f"'{anchor}'")
            results.append(s.execute(text(sql)).all())
        n_regions = len(s.scalars(select(Region.id)).all())
        idx = RegionIndex.open(s, tmp_path / "idx", 1)
        hits = similar(s, idx, Query(city="demo-3", region_id=anchor), k=5)
    joined, per_tract, nearest = results
    assert len(joined) == n_regions and all(r[1].startswith("T") and r[2] > 0 for r in joined)
    assert sum(r[2] for r in per_tract) == n_regions and all(r[1] > 0 for r in per_tract)
    assert [r[0] for r in nearest] == [h.region_id for h in hits]
    np.testing.assert_allclose([r[1] for r in nearest], [h.score for h in hits], atol=1e-5)
    engine.dispose()
