"""Engines, URLs, the vector type and bulk embedding reads, on both backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text

from musecl_store.ingest.apply import ingest_bundle
from musecl_store.settings import Settings
from musecl_store.store.engine import create_engine, resolve_url, transaction
from musecl_store.store.tables import Embedding, ModelVersion, Region
from musecl_store.store.vectors import load_embeddings, put_embeddings


def test_resolve_url_paths_urls_and_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_url(str(tmp_path / "a.sqlite"), Settings()) == f"sqlite:///{tmp_path}/a.sqlite"
    assert resolve_url("postgresql://u@h/db", Settings()) == "postgresql+psycopg://u@h/db"
    assert resolve_url(None, Settings(database_url="postgresql+psycopg://x@y/z")).endswith("@y/z")
    monkeypatch.chdir(tmp_path)
    assert resolve_url(None, Settings()) == f"sqlite:///{tmp_path}/musecl.sqlite"
    monkeypatch.setenv("MUSECL_DATABASE_URL", "postgresql+psycopg://e@nv/db")
    assert resolve_url() == "postgresql+psycopg://e@nv/db"


def test_unsupported_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        create_engine("mysql://root@localhost/test")
    with pytest.raises(ValueError, match="needs a file path"):
        create_engine("sqlite://")


def test_missing_spatialite_module_names_the_fix(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path}/x.sqlite", Settings(spatialite_library="no_such_mod")
    )
    with pytest.raises(Exception, match="libsqlite3-mod-spatialite"), engine.connect():
        pass


def _model(session) -> int:  # type: ignore[no-untyped-def]
    mv = ModelVersion(config={}, seed=0, data_revision=1, checkpoint_path="-")
    session.add(mv)
    session.flush()
    return mv.id


def test_vectors_round_trip_and_bulk_load(engine, tiny_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    with transaction(engine) as s:
        ingest_bundle(s, tiny_bundle)
        mv = _model(s)
        pks = list(s.scalars(select(Region.id).order_by(Region.region_id)))
        vecs = rng.normal(size=(len(pks), 16)).astype(np.float32)
        att = [{"remote": 0.25, "street": 0.0, "poi": 0.75}] * len(pks)
        put_embeddings(s, mv, "fused", pks, vecs, revision=1, attention=att)
    with transaction(engine) as s:
        ids, mat = load_embeddings(s, mv, "fused")
        one = s.scalars(select(Embedding).order_by(Embedding.id)).first()
        assert one is not None
        assert one.vector.dtype == np.float32 and one.vector.shape == (16,)
        assert one.attention == {"remote": 0.25, "street": 0.0, "poi": 0.75}
        # SQL can read the vector too: its first element, each backend in its own dialect.
        if engine.dialect.name == "postgresql":
            first = s.execute(
                text("SELECT vector[1] FROM embeddings WHERE id = :i"), {"i": one.id}
            ).scalar()
        else:
            first = s.execute(
                text("SELECT length(vector) / 4 FROM embeddings WHERE id = :i"), {"i": one.id}
            ).scalar()
            assert first == 16
            first = one.vector[0]
    assert ids == sorted(ids) and len(ids) == 6
    np.testing.assert_array_equal(mat, vecs)  # float32 in, the same float32 out
    assert first == pytest.approx(float(vecs[0, 0]))


def test_vectors_refuse_nan_and_bad_kinds(engine, tiny_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        ingest_bundle(s, tiny_bundle)
        mv = _model(s)
        pks = list(s.scalars(select(Region.id)))
        with pytest.raises(ValueError, match="kind must be one of"):
            put_embeddings(s, mv, "audio", pks, np.zeros((len(pks), 4)), revision=1)
        with pytest.raises(ValueError, match="must be \\(n_regions, dim\\)"):
            put_embeddings(s, mv, "fused", pks, np.zeros((2, 4)), revision=1)
        bad = np.zeros((len(pks), 4))
        bad[0, 0] = np.nan
        with pytest.raises(Exception, match="finite"):
            put_embeddings(s, mv, "fused", pks, bad, revision=1)
            s.flush()
        s.rollback()


def test_empty_load(engine) -> None:  # type: ignore[no-untyped-def]
    with transaction(engine) as s:
        ids, mat = load_embeddings(s, 12345, "poi")
    assert ids == [] and mat.shape[0] == 0


def test_images_are_refused_when_moved_or_changed(
    engine, tiny_bundle: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from musecl_store.embedding.images import open_checked
    from musecl_store.errors import ImageChangedError
    from musecl_store.store.tables import City, Image

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    with transaction(engine) as s:
        ingest_bundle(s, bundle)
        src = s.scalar(select(City.source_path))
        rows = s.execute(select(Image.path, Image.sha256).order_by(Image.path)).all()
    assert src is not None
    path, sha = rows[0]
    img = open_checked(src, path, sha)
    assert img.mode == "RGB" and img.size == (8, 8)
    (bundle / path).write_bytes((bundle / rows[1][0]).read_bytes())  # other pixels, same name
    with pytest.raises(ImageChangedError, match=f"image '{path}' .* changed since it was ingested"):
        open_checked(src, path, sha)
    (bundle / path).unlink()
    with pytest.raises(ImageChangedError, match=r"no longer at .*re-ingest it"):
        open_checked(src, path, sha)
