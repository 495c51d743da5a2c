"""Commands that read embeddings: ``index build/status``, ``similar``, ``similar-many``
and ``features``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from musecl_store.api import Store
from musecl_store.cli.csvfiles import read_points_csv, read_queries_csv
from musecl_store.cli.group import main
from musecl_store.cli.options import (
    city_option,
    comma_list,
    json_option,
    kind_option,
    model_option,
    out_option,
    search_options,
)
from musecl_store.cli.output import emit, table, write_out

if TYPE_CHECKING:
    import pandas as pd

    from musecl_store.search.hits import Hit


@main.group()
def index() -> None:
    """Build and inspect the FAISS indexes (a cache of the database, one per model version
    and kind, under MUSECL_INDEX_DIR, default ./.musecl-index)."""


@index.command("build")
@city_option
@model_option
@kind_option
@click.option(
    "--type",
    "index_type",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "flat", "hnsw", "ivf"]),
    help="Exact (flat) or approximate (hnsw, ivf); auto is exact up to 100k vectors.",
)
@json_option
@click.pass_obj
def index_build(
    store: Store, city: str, model_version: int | None, kind: str, index_type: str, as_json: bool
) -> None:
    """Build (or rebuild) the index of a model version's embeddings."""
    status = store.build_index(city, kind=kind, model_version=model_version, index_type=index_type)
    if as_json:
        emit(status)
    else:
        click.echo(
            f"built {status['index_type']} index of {status['ntotal']} {kind} vectors "
            f"(model version {status['model_version']}) at {status['path']}"
        )


@index.command("status")
@city_option
@model_option
@kind_option
@json_option
@click.pass_obj
def index_status(
    store: Store, city: str, model_version: int | None, kind: str, as_json: bool
) -> None:
    """Open the index, catch it up with the database, and show its stamp."""
    status = store.index_status(city, kind=kind, model_version=model_version)
    if as_json:
        emit(status)
    else:
        what = "rebuilt" if status["rebuilt"] else f"caught up {status['caught_up']} rows"
        click.echo(
            f"{status['path']}: {status['index_type']}, {status['ntotal']} vectors, "
            f"revision {status['revision']} ({what}; gpu: {status['gpu']})"
        )


@main.command()
@city_option
@click.argument("region_id", required=False)
@click.option("--point", metavar="LON,LAT", help="Query from the region containing this point.")
@search_options
@json_option
@click.pass_obj
def similar(
    store: Store,
    city: str,
    region_id: str | None,
    point: str | None,
    as_json: bool,
    **query: Any,
) -> None:
    """The K regions most similar to REGION_ID (or to the region at --point).

    \b
    score       the cosine of the two regions' embeddings (1 = same direction);
    percentile  the share, in %, of the other candidate regions (those that pass the
                filters; at most 10,000 sampled) that are LESS similar to the query:
                99.5 means only 0.5% of the regions are as close or closer.

    With filters the answer is exact: equal to brute force over the regions that pass them.
    JSON: a list of {"rank", "region_id", "city", "score", "percentile", "centroid"}
    (+ "geometry", "attention" when asked).
    """
    if (region_id is None) == (point is None):
        raise click.UsageError("give a REGION_ID or --point LON,LAT (one of them)")
    hits = store.search(city, region_id, point=point, **query)  # the search checks --point
    if as_json:
        emit([h.to_dict() for h in hits])
    elif not hits:
        click.echo("no region passes the filters")
    else:
        _hits_table(hits)


def _hits_table(hits: list[Hit]) -> None:
    """The hits of `similar` as a table, with a column per attention branch when asked."""
    branches = list(hits[0].attention or {})
    table(
        ["rank", "region_id", "city", "score", "percentile", "lon", "lat"]
        + [f"α {b}" for b in branches],
        [
            [
                h.rank,
                h.region_id,
                h.city,
                f"{h.score:.4f}",
                "" if h.percentile is None else f"{h.percentile:.1f}",
                f"{h.centroid[0]:.5f}",
                f"{h.centroid[1]:.5f}",
                *(f"{(h.attention or {}).get(b, 0.0):.2f}" for b in branches),
            ]
            for h in hits
        ],
        "><<>>>>" + ">" * len(branches),
    )


@main.command("similar-many")
@city_option
@click.argument("queries", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@search_options
@out_option
@json_option
@click.pass_obj
def similar_many(
    store: Store, city: str, queries: str, out: str | None, as_json: bool, **query: Any
) -> None:
    """The K regions most similar to each region or point of FILE, in one batch: the
    answers of `musecl similar` for every row, found together (one index check, one
    batched search), far faster than one `similar` per row.

    FILE is a CSV with a region_id column (regions of --city), or lon and lat columns (the
    region of --city containing each point); other columns are ignored; - reads stdin.

    \b
    Example:
      musecl similar-many --city demo-0 regions.csv -k 5 --exclude-adjacent --out similar.csv
      printf 'lon,lat\\n8.54,47.37\\n' | musecl similar-many --city demo-0 - --json

    CSV columns: query (the region id, or lon,lat), rank, region_id, city, score,
    percentile, lon, lat (+ attention:<branch>, geometry), error. A row of FILE that cannot
    be answered (an unknown region, a point in no region) gets one line with the reason in
    error, and the others are answered (a count goes to stderr); a query that no region
    passes the filters for gets no line. JSON: a list of {"query", "hits", "error"}, hits
    as in `musecl similar --json`.
    """
    ids, points = read_queries_csv(queries)
    if as_json:
        answers = store.search_many(city, ids, points, **query)
        failed = sum(a.error is not None for a in answers)
        text = json.dumps([a.to_dict() for a in answers], indent=2, ensure_ascii=False) + "\n"
    else:
        frame = store.similar_many(city, ids, points, **query)
        failed = int(frame["error"].notna().sum())  # one line per failed query
        text = frame.to_csv(index=False, float_format="%.7g")
    write_out(out, text)
    if failed:
        click.echo(f"{failed} of the queries could not be answered (see error)", err=True)


@main.command()
@city_option
@click.option("--regions", metavar="ID,ID,...", help="Region ids (default: every region).")
@click.option(
    "--points",
    type=click.Path(exists=True, dir_okay=False),
    help="CSV with lon,lat columns: the features of the region containing each point.",
)
@click.option(
    "--format",
    "fmt",
    default="csv",
    show_default=True,
    type=click.Choice(["csv", "json"]),
    help="Output format.",
)
@out_option
@model_option
@kind_option
@click.pass_obj
def features(
    store: Store,
    city: str,
    regions: str | None,
    points: str | None,
    fmt: str,
    out: str | None,
    model_version: int | None,
    kind: str,
) -> None:
    """Embeddings for downstream models, by region id or by point, in one bulk read.

    CSV columns: region_id,e0,...,e{d-1} (for --points: lon,lat first; a point in no region
    has an empty region_id and empty values). JSON: a list of {"region_id", "vector"}.
    """
    pts = read_points_csv(points) if points else None
    frame = store.features(
        city, comma_list(regions), points=pts, kind=kind, model_version=model_version
    )
    if fmt == "csv":
        write_out(out, frame.to_csv(index=False, float_format="%.7g"))
    else:
        write_out(out, _vectors_json(frame))


def _vectors_json(frame: pd.DataFrame) -> str:
    """The JSON of `features`: a {"region_id", "vector"} per row; no vector for a point in
    no region."""
    vectors = frame[[c for c in frame.columns if c.startswith("e")]].to_numpy()
    return json.dumps(
        [
            {
                "region_id": r,
                "vector": None
                if r is None or np.isnan(v).any()
                else [round(float(x), 7) for x in v],
            }
            for r, v in zip(frame["region_id"], vectors, strict=True)
        ]
    )
