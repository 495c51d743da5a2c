"""Commands about the store and its data: ``db init/check/status``, ``demo-city``,
``ingest``, ``census join``, ``info`` and ``cities``."""

from __future__ import annotations

import json
import sys

import click

from musecl_store.api import Store
from musecl_store.cli.group import main
from musecl_store.cli.options import city_option, comma_list, json_option
from musecl_store.cli.output import emit, table


@main.group()
def db() -> None:
    """Create, upgrade and inspect the store's schema."""


@db.command("init")
@json_option
@click.pass_obj
def db_init(store: Store, as_json: bool) -> None:
    """Create or upgrade the schema to the newest migration (safe to run again)."""
    result = store.init()
    before, after = result["from"], result["to"]
    if as_json:
        emit(result)
    else:
        what = "already at" if before == after else f"migrated {before or 'empty'} ->"
        click.echo(f"{store.shown_url}: {what} {after}")


@db.command("check")
@json_option
@click.option("--no-index", is_flag=True, help="Skip the FAISS index cache (MUSECL_INDEX_DIR).")
@click.pass_obj
def db_check(store: Store, as_json: bool, no_index: bool) -> None:
    """Verify the store's invariants: one vector per region, kind and model version; no
    model version without embeddings; no city half-ingested; the change log matches the
    revisions; SQLite's own integrity and foreign-key checks. Index caches that are stale or
    left over by a killed command are warnings (the next search repairs them).

    Exit code 0 when the store is sound, 1 when it is not (the errors say what is wrong)."""
    report = store.check(index=not no_index)
    if as_json:
        emit(report.to_dict())
    else:
        click.echo(f"{store.shown_url}: " + ("ok" if report.ok else "DAMAGED"))
        for k, v in report.checked.items():
            click.echo(f"  {k}: {v}")
        for w in report.warnings:
            click.echo(f"warning: {w}")
        for e in report.errors:
            click.echo(f"error: {e}")
    if not report.ok:
        sys.exit(1)


@db.command("status")
@json_option
@click.pass_obj
def db_status(store: Store, as_json: bool) -> None:
    """Show the database, its schema revision and the revision this code expects."""
    result = store.status()
    if as_json:
        emit(result)
    else:
        state = "up to date" if result["up_to_date"] else "needs `musecl db init`"
        click.echo(
            f"{store.shown_url} ({result['dialect']}): schema {result['current'] or 'none'}, "
            f"code expects {result['head']} — {state}"
        )


@main.command("demo-city")
@click.argument("out", type=click.Path(file_okay=False, writable=True))
@click.option("--seed", default=0, show_default=True, help="Random seed; same seed, same bundle.")
@click.option(
    "--regions", default=600, show_default=True, help="About how many H3 regions the city has."
)
@click.option("--name", default=None, help="City name (default demo-SEED).")
@click.option(
    "--h3-resolution",
    default=8,
    show_default=True,
    type=click.IntRange(5, 12),
    help="H3 resolution of the regions.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@json_option
def demo_city(
    out: str,
    seed: int,
    regions: int,
    name: str | None,
    h3_resolution: int,
    force: bool,
    as_json: bool,
) -> None:
    """Write a synthetic city bundle to OUT.

    A hexagonal city with smooth latent factors (density, affluence, commercial mix,
    greenery, nightlife, industry) that drive remote-sensing tiles, street views, POIs,
    taxi trips, census tracts and indicators. Each modality sees only part of what drives
    the indicators. The output includes the R² that a ridge regression on the true factors
    reaches for each indicator: an upper bound for any embedding.
    """
    from musecl_store.demo import make_demo_city

    city = make_demo_city(
        out,
        seed=seed,
        regions=regions,
        name=name,
        h3_resolution=h3_resolution,
        overwrite=force,
        show_progress=None if not as_json else False,
    )
    if as_json:
        emit(city.to_dict())
        return
    c = city.counts
    click.echo(
        f"wrote {city.name} to {city.path}: {c['regions']} regions, {c['pois']} POIs, "
        f"{c['remote_images']} remote tiles, {c['street_images']} street views "
        f"({c['regions_with_street']} regions), {c['trips']} trips"
    )
    click.echo("ridge R² from the true latent factors (5-fold CV; raw / log1p target):")
    for k, v in city.latent_r2.items():
        click.echo(f"  {k:<20} {v['raw']:.3f} / {v['log1p']:.3f}")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option(
    "--check",
    is_flag=True,
    help="Read, validate and diff the bundle against the store, and report: writes nothing, "
    "takes no lock, creates no file.",
)
@json_option
@click.pass_obj
def ingest(store: Store, bundle: str, check: bool, as_json: bool) -> None:
    """Ingest the city bundle at BUNDLE (see docs: the city-bundle contract).

    Re-ingesting an unchanged bundle writes nothing. A changed bundle updates only the
    regions whose content changed and records them in the change log under a new store
    revision. Rows that cannot be used are skipped and listed with file, line and reason;
    a fatal defect (missing required file or column, bad regions, wrong CRS) writes nothing.
    """
    summary = store.ingest(bundle, check=check, show_progress=False if as_json else None)
    result = summary.to_dict()
    result["checked_only"] = check
    if as_json:
        emit(result)
        return
    r = summary.regions
    if check:
        head = "check only, nothing written"
    elif summary.changed:
        head = f"revision {summary.revision}"
    else:
        head = "unchanged, nothing written"
    click.echo(f"{summary.city}: {head}")
    click.echo(
        f"  regions: {r['added']} added, {r['updated']} updated, {r['removed']} removed, "
        f"{r['unchanged']} unchanged ({r['total']} in the bundle)"
    )
    c = summary.counts
    click.echo(
        f"  read: {c['pois']} POIs, {c['images']['remote']} remote tiles, "
        f"{c['images']['street']} street views, {c['trips']['rows']} trips, "
        f"{sum(c['indicators'].values())} indicator values, "
        f"{len(c['census_layers'])} census layer(s)"
    )
    problems = summary.report
    if problems.total():
        click.echo(
            f"  problems: {problems.total('skipped')} skipped, {problems.total('fixed')} "
            "fixed, by file and reason:"
        )
        for (file, reason, action), n in sorted(problems.counts.items()):
            click.echo(f"    {file}: {reason} ({action}) x{n}")
        shown = problems.listed[:20]
        click.echo("  first rows:" if shown else "")
        for p in shown:
            click.echo(f"    {p}")
        if problems.total() > len(shown):
            click.echo("  (use --json for every listed row)")


@main.group()
def census() -> None:
    """Census layers (census/<layer>.geojson of a bundle) onto regions."""


@census.command("join")
@city_option
@click.option("--layer", required=True, help="The layer's name (its file name without .geojson).")
@click.option(
    "--extensive",
    metavar="FIELD,...",
    help="Count fields (population, households): shared out by intersected area.",
)
@click.option(
    "--intensive",
    metavar="FIELD,...",
    help="Rate or average fields (median income): area-weighted mean.",
)
@json_option
@click.pass_obj
def census_join(
    store: Store, city: str, layer: str, extensive: str | None, intensive: str | None, as_json: bool
) -> None:
    """Interpolate census fields onto the city's regions by area weighting, in SQL.

    Intersections are measured in an equal-area projection (EPSG:6933) by the database.
    The values become indicators with source census:LAYER.
    """
    result = store.census_join(
        city, layer, extensive=comma_list(extensive) or [], intensive=comma_list(intensive) or []
    )
    if as_json:
        emit(result.to_dict())
    else:
        click.echo(
            f"{result.values} values of {', '.join(result.extensive + result.intensive)} on "
            f"{result.regions} regions (revision {result.revision})"
        )


@main.command()
@city_option
@json_option
@click.pass_obj
def info(store: Store, city: str, as_json: bool) -> None:
    """Counts of what the store holds for one city, and the store revision."""
    result = store.info(city)
    if as_json:
        emit(result)
        return
    click.echo(
        f"{result['city']} (revision {result['revision']}, store revision "
        f"{result['store_revision']}; {result['crs']}; from {result['source']})"
    )
    w = result["regions_with"]
    click.echo(f"  regions      {result['regions']}")
    click.echo(f"  POIs         {result['pois']} in {w['pois']} regions")
    click.echo(f"  remote tiles {result['images']['remote']} in {w['remote']} regions")
    click.echo(f"  street views {result['images']['street']} in {w['street']} regions")
    click.echo(
        f"  trips        {result['trips']} within the city ({result['trips_out']} out, "
        f"{result['trips_in']} in) touching {w['trips']} regions"
    )
    for name, n in result["indicators"].items():
        click.echo(f"  indicator    {name}: {n} values")
    for name, n in result["census_layers"].items():
        click.echo(f"  census       {name}: {n} polygons")


@main.command()
@json_option
@click.pass_obj
def cities(store: Store, as_json: bool) -> None:
    """List the cities in the store."""
    frame = store.cities()
    if as_json:
        emit(json.loads(frame.to_json(orient="records")))
        return
    if frame.empty:
        click.echo("no city yet; `musecl ingest BUNDLE` adds one")
        return
    cols = ["city", "regions", "revision", "crs", "source"]
    table(cols, frame[cols].values.tolist(), "<>><<")
