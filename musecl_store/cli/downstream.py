"""Commands downstream of the embeddings: ``regress fit/predict/list``, ``export`` and
``map``."""

from __future__ import annotations

from typing import Any

import click

from musecl_store.api import Store
from musecl_store.cli.group import main
from musecl_store.cli.options import city_option, json_option, kind_option, model_option
from musecl_store.cli.output import emit, table


@main.group()
def regress() -> None:
    """Predict indicators from embeddings: fit (with cross-validated metrics), predict, list."""


@regress.command("fit")
@city_option
@click.option("--indicator", required=True, help="The indicator to learn (see `musecl info`).")
@click.option(
    "--head",
    default="mlp",
    show_default=True,
    type=click.Choice(["mlp", "ridge"]),
    help="The paper's MLP (512-256-128-64) or ridge (penalty by leave-one-out).",
)
@click.option("--log-target", is_flag=True, help="Learn log1p(target); predictions are expm1'd.")
@click.option(
    "--folds",
    default=5,
    show_default=True,
    type=click.IntRange(2),
    help="Cross-validation folds for the reported metrics.",
)
@model_option
@kind_option
@json_option
@click.pass_obj
def regress_fit(store: Store, city: str, indicator: str, as_json: bool, **fit: Any) -> None:
    """Fit a regressor of INDICATOR on a city's embeddings and store it."""
    # The other options are Store.regress's keywords (head, log_target, folds ...); its log
    # goes to stderr, so that --json's stdout stays clean.
    out = store.regress(city, indicator, log=lambda msg: click.echo(msg, err=True), **fit)
    if as_json:
        emit(out)
    else:
        m = out["metrics"]
        click.echo(
            f"{out['regressor']}: {fit['folds']}-fold R² {m['r2']:.3f} ± {m['r2_std']:.3f}, RMSE "
            f"{m['rmse']:.4g}, MAPE {m['mape']:.1f}% (n={m['n']})"
        )


@regress.command("predict")
@click.option(
    "--regressor", "regressor_id", required=True, help="A regressor id from `regress fit`."
)
@city_option
@click.option(
    "--all",
    "all_regions",
    is_flag=True,
    help="Predict every region, not only those that lack the indicator.",
)
@json_option
@click.pass_obj
def regress_predict(
    store: Store, regressor_id: str, city: str, all_regions: bool, as_json: bool
) -> None:
    """Write predictions of a fitted regressor for a city (any city embedded by its model)."""
    result = store.predict(regressor_id, city, all_regions=all_regions)
    if as_json:
        emit(result.to_dict())
    else:
        click.echo(
            f"{result.written} predictions of {result.indicator} for {city} "
            f"(revision {result.revision})"
        )


@regress.command("list")
@json_option
@click.pass_obj
def regress_list(store: Store, as_json: bool) -> None:
    """The fitted regressors and their cross-validated metrics."""
    rows = store.regressors()
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no regressor yet; `musecl regress fit` makes one")
        return
    table(
        ["regressor", "indicator", "head", "model_version", "kind", "R²"],
        [
            [
                r["regressor"],
                r["indicator"],
                r["head"],
                r["model_version"],
                r["kind"],
                f"{r['metrics'].get('r2', float('nan')):.3f}",
            ]
            for r in rows
        ],
        "<<<><>",
    )


@main.command()
@city_option
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["csv", "geojson", "parquet"]),
    help="csv (region_id,e0..), geojson (polygons + embedding) or GeoParquet.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The file to write.")
@model_option
@kind_option
@json_option
@click.pass_obj
def export(
    store: Store, city: str, fmt: str, out: str, model_version: int | None, kind: str, as_json: bool
) -> None:
    """Export a city's embeddings of one kind to CSV, GeoJSON or GeoParquet."""
    result = store.export(city, out, fmt=fmt, kind=kind, model_version=model_version)
    if as_json:
        emit(result.to_dict())
    else:
        click.echo(f"wrote {result.rows} {kind} embeddings ({result.dim}-d) to {result.path}")


@main.command("map")
@city_option
@click.option("--indicator", help="Colour regions by this indicator.")
@click.option(
    "--prediction", metavar="REGRESSOR", help="Colour regions by this regressor's predictions."
)
@click.option("--similar-to", metavar="REGION_ID", help="Colour regions by similarity to this one.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The PNG to write.")
@click.option(
    "-k",
    default=10,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="With --similar-to: outline this many most similar regions.",
)
@click.option(
    "--width",
    default=900,
    show_default=True,
    type=click.IntRange(200, 8000),
    help="Image width in pixels.",
)
@model_option
@json_option
@click.pass_obj
def map_command(store: Store, city: str, out: str, as_json: bool, **drawing: Any) -> None:
    """Draw a choropleth PNG of an indicator, a prediction or the similarity to a region.

    A similarity map marks the query region (black outline and dot) and outlines its K most
    similar regions in red; the legend says which is which."""
    # The other options are the keywords of Store.map: indicator, prediction, similar_to ...
    result = store.map(city, out, **drawing)
    if as_json:
        emit(result.to_dict())
    else:
        click.echo(
            f"wrote {result.path}: {result.title} ({result.with_value} of {result.regions} "
            f"regions, {result.vmin:.4g} .. {result.vmax:.4g})"
        )
