"""Indicator regression, embedding a second city with a trained model, and cross-city use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from musecl_store.cli import main
from musecl_store.downstream.regressors import RegressionError, apply, fit, predict
from musecl_store.embedding.run import embed_city
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.search.filters import Filters
from musecl_store.search.index import RegionIndex
from musecl_store.search.query import Query, similar
from musecl_store.store.engine import create_engine, transaction
from musecl_store.store.tables import City, Indicator, Prediction, Region
from musecl_store.store.vectors import load_embeddings

pytestmark = pytest.mark.slow


@pytest.fixture
def engine2(backend, trained: str):  # type: ignore[no-untyped-def]
    e = create_engine(backend.clone(trained))
    yield e
    e.dispose()


def test_fit_predict_writes_what_is_missing(engine2) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine2) as s:
        steps: list[str] = []
        reg = fit(s, "demo-3", "housing_density", head="ridge", log_target=True, log=steps.append)
        assert reg.metrics["n"] > 40 and -1 < reg.metrics["r2"] <= 1
        assert set(reg.metrics) >= {"r2", "r2_std", "rmse", "mape"}
        assert [m.split(" ")[0] for m in steps] == ["5-fold", "fitting"]
        mlp = fit(s, "demo-3", "housing_density", head="mlp")
        _ids, x = load_embeddings(s, 1, "fused")
        assert np.isfinite(apply(mlp, x)).all()
        known = s.scalar(
            select(func.count()).select_from(Indicator).where(Indicator.name == "housing_density")
        )
        n_regions = s.scalar(select(func.count()).select_from(Region))
        result = predict(s, reg.id, "demo-3")
        assert result.written == n_regions - known > 0
        rows = s.scalars(select(Prediction)).all()
        assert len(rows) == result.written
        assert all(
            p.regressor == reg.id
            and p.model_version_id == 1
            and p.value > 0
            and p.metrics["r2"] == reg.metrics["r2"]
            for p in rows
        )
        again = predict(s, reg.id, "demo-3", all_regions=True)  # replaces, never duplicates
        assert again.written == n_regions
        assert s.scalar(select(func.count()).select_from(Prediction)) == n_regions
        with pytest.raises(RegressionError, match="indicator 'income' does not exist"):
            fit(s, "demo-3", "income")
        with pytest.raises(RegressionError, match="no regressor 'nope'"):
            predict(s, "nope", "demo-3")


def test_cross_city_transfer_and_search(engine2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from musecl_store.demo import make_demo_city

    other = tmp_path / "other"
    make_demo_city(other, seed=11, regions=20, name="elsewhere")
    with transaction(engine2) as s:
        ingest_bundle(s, other)
        reg = fit(s, "demo-3", "crime", head="ridge")
        with pytest.raises(RegressionError, match="embed it first: musecl embed --city elsewhere"):
            predict(s, reg.id, "elsewhere")
    with transaction(engine2) as s:
        out = embed_city(s, "elsewhere", 1)
        assert out["embeddings"]["fused"] > 10
    with transaction(engine2) as s:
        result = predict(s, reg.id, "elsewhere", all_regions=True)
        assert result.written == out["embeddings"]["fused"]
        idx = RegionIndex.open(s, tmp_path / "idx", 1)
        assert idx.stamp.count > out["embeddings"]["fused"]  # both cities are in the index
        anchor = s.scalar(
            select(Region.region_id)
            .join(City, City.id == Region.city_id)
            .where(City.name == "demo-3")
            .limit(1)
        )
        hits = similar(
            s, idx, Query(city="demo-3", region_id=anchor), k=5, filters=Filters(other_cities=True)
        )
        assert hits and {h.city for h in hits} == {"elsewhere"}
        same = similar(
            s, idx, Query(city="demo-3", region_id=anchor), k=5, filters=Filters(same_city=True)
        )
        assert {h.city for h in same} == {"demo-3"}


def test_cli_regress(backend, trained: str) -> None:  # type: ignore[no-untyped-def]
    url = backend.clone(trained)
    runner = CliRunner()
    fitted = runner.invoke(
        main,
        [
            "--db",
            url,
            "regress",
            "fit",
            "--city",
            "demo-3",
            "--indicator",
            "crime",
            "--head",
            "ridge",
            "--json",
        ],
    )
    assert fitted.exit_code == 0, fitted.output
    rid = json.loads(fitted.stdout)["regressor"]  # the progress lines go to stderr only
    assert "5-fold cross-validation of the ridge head" in fitted.stderr
    pred = runner.invoke(
        main, ["--db", url, "regress", "predict", "--regressor", rid, "--city", "demo-3", "--json"]
    )
    assert pred.exit_code == 0 and json.loads(pred.stdout)["written"] >= 0
    listed = json.loads(runner.invoke(main, ["--db", url, "regress", "list", "--json"]).stdout)
    assert [r["regressor"] for r in listed] == [rid]
