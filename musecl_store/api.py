"""The public Python API: open a store, then call the verbs people think in.

>>> import musecl_store
>>> with musecl_store.open("musecl.sqlite") as store:          # doctest: +SKIP
...     hits = store.similar("demo-0", "8844c0a301fffff", k=5)

Every front end (the ``musecl`` CLI, the HTTP server) goes through this :class:`Store`; the
library modules underneath (``search``, ``features``, ``regress`` ...) take a SQLAlchemy
session and stay usable on their own. Reads and writes each run in their own short
transaction: a method that raises has written nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack, cast

import numpy as np

from musecl_store import faults
from musecl_store.errors import InputError, StoreNotFoundError
from musecl_store.search.filters import Search, SearchOptions
from musecl_store.settings import Settings
from musecl_store.store.connection import Connection
from musecl_store.store.engine import resolve_url
from musecl_store.store.tables import EMBEDDING_KINDS

if TYPE_CHECKING:
    import pandas as pd

    from musecl_store.downstream.regressors import PredictSummary
    from musecl_store.exports.files import Exported
    from musecl_store.exports.maps import MapResult
    from musecl_store.ingest.census import CensusJoin
    from musecl_store.ingest.plan import IngestSummary
    from musecl_store.search.cache import IndexCache
    from musecl_store.search.hits import Hit
    from musecl_store.search.many import Answer
    from musecl_store.store.check import CheckReport
    from training.writeback import TrainResult

__all__ = ["KINDS", "Search", "SearchOptions", "Store", "StoreNotFoundError", "open"]

KINDS = EMBEDDING_KINDS  # the embedding kinds a search or a feature lookup may use


def open(
    db: str | Path | None = None,
    *,
    index_dir: str | Path | None = None,
    create: bool = False,
    read_db: str | None = None,
) -> Store:
    """Open the store at ``db``: a SpatiaLite file path or a ``postgresql+psycopg://`` URL.
    ``read_db``: a PostgreSQL streaming replica of ``db`` for the reads (default
    ``MUSECL_READ_DATABASE_URL``); writes always go to ``db``.

    Without ``db``: ``MUSECL_DATABASE_URL``, else ``./musecl.sqlite``. A SpatiaLite file that
    does not exist is an error unless ``create`` is true or the call is :meth:`Store.ingest`
    (or :meth:`Store.init`), so that a typo never makes an empty store.
    """
    settings = Settings.from_env()
    if index_dir is not None:
        settings = Settings(**{**asdict(settings), "index_dir": Path(index_dir)})
    return Store(
        resolve_url(None if db is None else str(db), settings),
        settings,
        create=create,
        read_url=read_db,
    )


class Store(Connection):
    """One musecl store (a SpatiaLite file or a PostGIS database) and its FAISS cache.

    A context manager: ``with musecl_store.open(...) as store:`` closes its connections.
    Its engines and sessions are those of :class:`~musecl_store.store.connection.Connection`.
    """

    def __init__(
        self,
        url: str,
        settings: Settings | None = None,
        *,
        create: bool = False,
        read_url: str | None = None,
    ):
        super().__init__(url, settings, create=create, read_url=read_url)
        self._index_cache: IndexCache | None = None  # the open FAISS indexes, made on use

    def close(self) -> None:
        """Release the database connections and the open indexes (the store stays usable:
        it reopens on use)."""
        super().close()
        with self._engine_lock:
            self._index_cache = None

    @property
    def _indexes(self) -> IndexCache:
        """The open FAISS indexes (see :mod:`musecl_store.search.cache`)."""
        with self._engine_lock:
            if self._index_cache is None:
                from musecl_store.search.cache import IndexCache

                self._index_cache = IndexCache(self.index_dir, self.session)
            return self._index_cache

    # ------------------------------------------------------------------ schema

    def check(self, *, index: bool = True) -> CheckReport:
        """Verify the store's invariants (and, with ``index``, the FAISS cache's state); see
        :mod:`musecl_store.store.check`. Reads only."""
        from musecl_store.search.index import check_cache
        from musecl_store.store.check import check_store

        with self.session() as s:
            report = check_store(s)
            if index:
                check_cache(s, self.index_dir, report)
            return report

    # ------------------------------------------------------------------ what is there

    def cities(self) -> pd.DataFrame:
        """One row per city: city, regions, revision, crs, h3_resolution, source,
        updated_at."""
        import pandas as pd

        from musecl_store.store.cities import list_cities

        with self.session() as s:
            rows = list_cities(s)
        cols = ["city", "regions", "revision", "crs", "h3_resolution", "source", "updated_at"]
        return pd.DataFrame(rows, columns=cols).astype({"h3_resolution": "Int64"})

    def info(self, city: str) -> dict[str, Any]:
        """Counts of everything the store holds for one city, and the store revision."""
        from musecl_store.store.cities import city_info

        with self.session() as s:
            return city_info(s, city)

    def regions(
        self,
        city: str,
        ids: Sequence[str] | None = None,
        *,
        indicators: bool = False,
        predictions: bool = False,
    ) -> Any:
        """The city's regions (or those of ``ids``) as a GeoDataFrame (EPSG:4326), ordered by
        ``region_id``.

        Columns: region_id, h3_cell, lon, lat (centroid), area_km2, geometry; with
        ``indicators`` one column per indicator (``indicator:<name>`` for a name that is
        already a column), with ``predictions`` one column ``predicted:<indicator>`` per
        predicted indicator (the newest regressor's).
        """
        from musecl_store.store.regions import regions_frame

        with self.session() as s:
            return regions_frame(s, city, ids, indicators=indicators, predictions=predictions)

    def active_model_version(self, city: str) -> int:
        """The city's active model version (the one searches use by default)."""
        from musecl_store.store.versions import active_model_version

        with self.session() as s:
            return active_model_version(s, city)

    def models(self, city: str | None = None) -> list[dict[str, Any]]:
        """Model versions (of one city, when given) with embedding counts and mean R²."""
        from musecl_store.store.versions import list_models

        with self.session() as s:
            return list_models(s, city)

    def activate_model(self, version: int) -> dict[str, Any]:
        """Make a model version the active one of its city."""
        from musecl_store.store.versions import activate

        with self.session(write=True) as s:
            mv = activate(s, version)
            faults.point("models:activated")
        faults.point("models:activate_committed")
        return {"model_version": mv.id, "active": True}

    def delete_model(self, version: int) -> dict[str, Any]:
        """Delete a model version with its embeddings, regressors and cached indexes."""
        from musecl_store.search.index import drop_index_folders
        from musecl_store.store.tables import ModelVersion
        from musecl_store.store.versions import delete

        self._indexes.forget(version)
        with self.session(write=True) as s:
            if s.get(ModelVersion, version) is None and any(
                self.index_dir.glob(f"mv{version}-*")
            ):  # deleted by a run that died before it removed the caches: finish that
                out: dict[str, Any] = {"model_version": version, "embeddings_deleted": 0}
            else:
                out = delete(s, version)
                faults.point("models:deleted")
        faults.point("models:delete_committed")
        self._indexes.forget(version)
        # the cached indexes go after the commit: a crash before it keeps a usable cache
        out["indexes_removed"] = drop_index_folders(self.index_dir, version)
        return out

    # ------------------------------------------------------------------ index, search

    def build_index(
        self,
        city: str,
        *,
        kind: str = "fused",
        model_version: int | None = None,
        index_type: str = "auto",
    ) -> dict[str, Any]:
        """Build (or rebuild) the FAISS index of a model version's embeddings of one kind."""
        return self._indexes.build(city, model_version, kind, index_type)

    def index_status(
        self, city: str, *, kind: str = "fused", model_version: int | None = None
    ) -> dict[str, Any]:
        """Open the index, catch it up with the database, and return its stamp."""
        with self._indexes.held(city, model_version, kind) as (s, idx):
            idx.refresh(s)
            return dict(idx.status())

    def search(self, city: str, region: str | None = None, **query: Unpack[Search]) -> list[Hit]:
        """Like :meth:`similar`, as a list of :class:`~musecl_store.search.query.Hit` records."""
        from musecl_store.search.filters import filters_from
        from musecl_store.search.query import Query, similar

        filters = filters_from(query)  # Filters and Query check every value, naming it
        point, vector = query.get("point"), query.get("vector")
        where = Query(
            city=city,
            region_id=region,
            point=point,
            vector=vector,  # type: ignore[arg-type]
        )
        return self._searched(similar, city, where, filters, query)

    def _searched(
        self, run: Callable[..., Any], city: str, where: Any, filters: Any, query: Any, **more: Any
    ) -> Any:
        """``run`` (``similar`` or ``similar_many``) on the open index of the query's model
        version and kind, with the query's k and what to include."""
        kind = query.get("kind", "fused")
        with self._indexes.held(city, query.get("model_version"), kind) as (s, idx):
            return run(
                s,
                idx,
                where,
                query.get("k", 10),
                filters,
                with_geometry=query.get("geometry", False),
                with_attention=query.get("attention", False),
                **more,
            )

    def similar(
        self, city: str, region: str | None = None, **query: Unpack[Search]
    ) -> pd.DataFrame:
        """The ``k`` regions most similar to a region of ``city`` (by id), to the region at a
        lon/lat ``point``, or to a ``vector``; best first. Exact under the filters.

        Columns: rank, region_id, city, score (the cosine of the embeddings), percentile (the
        share, in %, of the other candidate regions less similar to the query), lon, lat;
        ``attention:<branch>`` columns with ``attention``; a GeoDataFrame with ``geometry``.
        The keywords are those of :class:`Search`: ``point``, ``vector``, ``k`` (10), the
        filters ``bbox`` (minlon, minlat, maxlon, maxlat), ``near`` (lon, lat, km),
        ``polygon`` (WKT, GeoJSON or shapely), ``same_city``, ``other_cities``,
        ``exclude_adjacent``, and ``geometry``, ``attention``, ``kind`` ("fused"),
        ``model_version`` (the active one).
        """
        hits = self.search(city, region, **query)
        from musecl_store.search.frames import hits_frame

        return hits_frame([(None, h, None) for h in hits], query.get("geometry", False))

    def search_many(
        self,
        city: str,
        regions: Sequence[str] | None = None,
        points: Sequence[tuple[float, float]] | None = None,
        vectors: Sequence[Sequence[float]] | np.ndarray | None = None,
        *,
        show_progress: bool | None = None,
        **query: Unpack[SearchOptions],
    ) -> list[Answer]:
        """Like :meth:`similar_many`, as one :class:`~musecl_store.search.query.Answer` (query,
        hits, error) per query."""
        from musecl_store.search.filters import filters_from
        from musecl_store.search.many import Queries, similar_many

        filters = filters_from(query)
        queries = Queries(city=city, region_ids=regions, points=points, vectors=vectors)
        return self._searched(
            similar_many, city, queries, filters, query, show_progress=show_progress
        )

    def similar_many(
        self,
        city: str,
        regions: Sequence[str] | None = None,
        points: Sequence[tuple[float, float]] | None = None,
        vectors: Sequence[Sequence[float]] | np.ndarray | None = None,
        *,
        show_progress: bool | None = None,
        **query: Unpack[SearchOptions],
    ) -> pd.DataFrame:
        """:meth:`similar` for many queries at once: region ids of ``city``, lon/lat
        ``points`` or ``vectors`` (one of them). The answers are those of :meth:`similar` for
        each query, found together: the index is checked once, the query regions are found
        in bulk, and the queries are scored in one batched search.

        Columns: ``query`` (the region id, ``"lon,lat"``, or the vector's row number), then
        those of :meth:`similar`, then ``error``. A query that cannot be answered (an unknown
        region, a point in no region, a bad vector ...) has one row with ``error`` saying why
        and the other columns empty; a query that no region passes the filters for has no
        row. The keywords are those of :meth:`similar` but ``point`` and ``vector``.
        """
        answers = self.search_many(
            city, regions, points, vectors, show_progress=show_progress, **query
        )
        rows: list[tuple[str | int | None, Hit | None, str | None]] = []
        for a in answers:
            if a.error is not None:
                rows.append((a.query, None, a.error))
            else:
                rows.extend((a.query, h, None) for h in a.hits)
        from musecl_store.search.frames import hits_frame

        return hits_frame(rows, query.get("geometry", False), with_query=True)

    def features(
        self,
        city: str,
        ids: Sequence[str] | None = None,
        *,
        points: Sequence[tuple[float, float]] | None = None,
        kind: str = "fused",
        model_version: int | None = None,
    ) -> pd.DataFrame:
        """Embeddings for downstream models, in one bulk read: ``region_id, e0 .. e{d-1}``
        for the given region ids (default: every region), or ``lon, lat, region_id, e0 ..``
        for the region containing each point (NaN and no id for a point in no region)."""
        from musecl_store.search.features import lookup

        with self.session() as s:
            table = lookup(
                s,
                city,
                kind=kind,
                model_version=model_version,
                region_ids=None if ids is None else list(ids),
                points=None if points is None else list(points),
            )
        frame = table.to_frame()
        if points is not None:
            frame.insert(0, "lat", [float(p[1]) for p in points])
            frame.insert(0, "lon", [float(p[0]) for p in points])
        return frame

    # ------------------------------------------------------------------ learning

    def evaluate(
        self,
        city: str,
        *,
        model_version: int | None = None,
        indicators: Sequence[str] | None = None,
        log_target: bool = False,
        folds: int = 5,
        seed: int = 0,
        show_progress: bool | None = None,
    ) -> pd.DataFrame:
        """The paper's table: R², RMSE and MAPE of every embedding (row) on every indicator,
        by k-fold CV with the MLP and ridge heads; one row per (indicator, embedding, head).
        Saved into the model version's metrics."""
        import pandas as pd

        from musecl_store.downstream.evaluation import evaluate_city
        from musecl_store.downstream.mlp import EvalConfig

        cfg = EvalConfig(folds=folds, seed=seed, log_target=log_target)
        with self.session() as s:
            records = evaluate_city(
                s,
                city,
                model_version=model_version,
                indicators=list(indicators) if indicators else None,
                cfg=cfg,
                show_progress=show_progress,
            )
        return pd.DataFrame.from_records(records)

    def regress(
        self,
        city: str,
        indicator: str,
        *,
        head: str = "mlp",
        log_target: bool = False,
        folds: int = 5,
        kind: str = "fused",
        model_version: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Fit a regressor of ``indicator`` on the city's embeddings, with cross-validated
        metrics, and store it. Returns {regressor, model_version, kind, indicator, head,
        metrics}; pass the regressor id to :meth:`predict`."""
        from musecl_store.downstream import regressors as R

        with self.session(primary=True) as s:  # read, then fit with no transaction open
            fitted = R.fit_params(
                s,
                city,
                indicator,
                model_version=model_version,
                kind=kind,
                head=head,
                log_target=log_target,
                folds=folds,
                log=log,
            )
        faults.point("regress:fitted")
        with self.session(write=True) as s:  # waits for other writers: the fit is not lost
            reg = R.save(s, fitted)
            out = R.describe(reg)
            faults.point("regress:written")
        faults.point("regress:committed")
        return out

    def predict(self, regressor: str, city: str, *, all_regions: bool = False) -> PredictSummary:
        """Write a fitted regressor's predictions for the city's regions that lack the
        indicator (or all of them), with provenance."""
        from musecl_store.downstream import regressors as R

        with self.session(write=True) as s:
            out = R.predict(s, regressor, city, all_regions=all_regions)
            faults.point("predict:written")
        faults.point("predict:committed")
        return out

    def regressors(self) -> list[dict[str, Any]]:
        """The fitted regressors and their cross-validated metrics."""
        from musecl_store.downstream import regressors as R

        with self.session() as s:
            return R.list_regressors(s)

    def predicted(self, city: str) -> list[dict[str, Any]]:
        """The (regressor, indicator) pairs with predictions for the city's regions."""
        from musecl_store.downstream import regressors as R

        with self.session() as s:
            return R.predicted(s, city)

    def map_values(
        self,
        city: str,
        *,
        indicator: str | None = None,
        prediction: str | None = None,
        similar_to: str | None = None,
        model_version: int | None = None,
    ) -> dict[str, float]:
        """region_id -> value of exactly one of an indicator, a regressor's predictions or
        the cosine similarity to a region: what a choropleth shows."""
        from musecl_store.exports.maps import values_for

        with self.session() as s:
            return values_for(
                s,
                city,
                indicator=indicator,
                prediction=prediction,
                similar_to=similar_to,
                model_version=model_version,
            )[1]

    # ------------------------------------------------------------------ writing

    def ingest(
        self, bundle: str | Path, *, check: bool = False, show_progress: bool | None = None
    ) -> IngestSummary:
        """Ingest a city bundle (see docs/city-bundle.md). All or nothing.

        ``check`` validates the bundle and diffs it against the store without writing: it
        takes no write lock and creates no file or schema (a store that does not exist yet
        is an empty one); the summary is the one the ingest would give, without a revision.
        """
        from musecl_store.bundle.reader import read_bundle
        from musecl_store.ingest.apply import write_bundle
        from musecl_store.ingest.plan import plan_bundle

        read = read_bundle(bundle, show_progress=show_progress)  # before taking the lock
        faults.point("ingest:read")
        if check:
            if not self._initialised():  # no store yet: everything is new
                return plan_bundle(None, read).summary
            with self.session(primary=True) as s:  # reads only: no lock, nothing written
                return plan_bundle(s, read).summary
        with self.session(create=True, write=True) as s:
            summary = write_bundle(s, read)
            faults.point("ingest:written")
        faults.point("ingest:committed")
        return summary

    def train(
        self,
        city: str,
        config: dict[str, Any] | str | Path | None = None,
        *,
        resume: bool = True,
        device: str = "auto",
        show_progress: bool | None = None,
        log: Callable[[str], None] | None = None,
        nproc: int = 1,
        **overrides: Any,
    ) -> TrainResult:
        """Train MuseCL on a city and store every region's embeddings as a new active model
        version. ``config``: a dict or a JSON file of training settings
        (``training/config.py``); keyword overrides win over it.

        ``nproc`` > 1 trains data-parallel on that many local processes (DDP; gloo on CPUs,
        NCCL with one GPU per process): the batch sizes are global, so the same seed gives
        the same model as one process. Their messages then go to stderr (``log`` given) or
        nowhere. A rank that fails stops the job with a
        :class:`~training.launch.DistributedTrainingError` and no model version written."""
        from training.config import TrainConfig
        from training.trainer import train_city

        if isinstance(config, str | Path):
            cfg = TrainConfig.from_file(config, **overrides)
        else:
            cfg = TrainConfig.from_dict({**(config or {}), **overrides})
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise InputError(f"nproc must be a whole number of at least 1, not {nproc!r}")
        if nproc > 1:
            from training.launch import RankJob, train_parallel

            job = RankJob(
                url=self.url,
                settings=self.settings,
                city=city,
                config=cfg.to_dict(),
                resume=resume,
                device=device,
                show_progress=show_progress,
                log_to="stderr" if log is not None else None,
            )
            return cast("TrainResult", train_parallel(self.engine(), job, nproc))
        return train_city(
            self.engine(),
            city,
            cfg,
            resume=resume,
            device=device,
            show_progress=show_progress,
            log=log or (lambda msg: None),
        )

    def embed(
        self, city: str, model_version: int, *, show_progress: bool | None = None
    ) -> dict[str, Any]:
        """Embed every region of a city with an existing (frozen) model version."""
        from musecl_store.embedding.run import embed_city

        with self.session(write=True) as s:
            out = embed_city(s, city, model_version, show_progress=show_progress)
            faults.point("embed:written")
        faults.point("embed:committed")
        return out

    def reembed(
        self,
        city: str,
        *,
        regions: Sequence[str] | None = None,
        since: int | None = None,
        all_regions: bool = False,
        model_version: int | None = None,
        show_progress: bool | None = None,
    ) -> dict[str, Any]:
        """Recompute the embeddings of changed regions (or the given ones, or all) with the
        frozen model, update the index in place, and report the drift."""
        from musecl_store.embedding.reembed import reembed_and_report

        if sum([regions is not None, since is not None, all_regions]) > 1:
            raise InputError("use at most one of regions, since and all_regions")
        if since is not None:
            from musecl_store.store.cities import store_revision

            with self.session(primary=True) as s:
                newest = store_revision(s)
            if not 0 <= since <= newest:
                raise InputError(
                    f"revision {since} does not exist (the store's revisions run from 0 to "
                    f"{newest}; `musecl info --city CITY` shows the newest)"
                )
        out = reembed_and_report(
            self.engine(),
            self.index_dir,
            city,
            model_version=model_version,
            region_ids=None if regions is None else list(regions),
            since=since,
            all_regions=all_regions,
            show_progress=show_progress,
        )
        self._indexes.forget(out["model_version"])  # searches reopen what reembed updated on disk
        return out

    def census_join(
        self,
        city: str,
        layer: str,
        *,
        extensive: Sequence[str] = (),
        intensive: Sequence[str] = (),
    ) -> CensusJoin:
        """Interpolate census fields onto the regions by area weighting, in SQL."""
        from musecl_store.ingest.census import join_layer

        with self.session(write=True) as s:
            out = join_layer(s, city, layer, extensive=list(extensive), intensive=list(intensive))
            faults.point("census:written")
        faults.point("census:committed")
        return out

    def export(
        self,
        city: str,
        out: str | Path,
        *,
        fmt: str | None = None,
        kind: str = "fused",
        model_version: int | None = None,
    ) -> Exported:
        """Write a city's embeddings to CSV, GeoJSON or GeoParquet (``fmt`` defaults to the
        file's suffix: .csv, .geojson, .parquet)."""
        from musecl_store.exports.files import export_city
        from musecl_store.exports.output import writing

        if fmt is None:
            fmt = {
                ".csv": "csv",
                ".geojson": "geojson",
                ".json": "geojson",
                ".parquet": "parquet",
            }.get(Path(out).suffix.lower())
            if fmt is None:
                raise InputError(f"{out}: say the format (csv, geojson or parquet)")
        with self.session() as s, writing(out):
            return export_city(s, city, out, fmt=fmt, kind=kind, model_version=model_version)

    def map(
        self,
        city: str,
        out: str | Path,
        *,
        indicator: str | None = None,
        prediction: str | None = None,
        similar_to: str | None = None,
        k: int = 10,
        width: int = 900,
        model_version: int | None = None,
    ) -> MapResult:
        """Draw a choropleth PNG of an indicator, a prediction or the similarity to a region
        (the query region marked and its ``k`` most similar outlined)."""
        from musecl_store.exports.maps import draw
        from musecl_store.exports.output import writing

        with self.session() as s, writing(out):
            return draw(
                s,
                city,
                out,
                width=width,
                k=k,
                indicator=indicator,
                prediction=prediction,
                similar_to=similar_to,
                model_version=model_version,
            )
