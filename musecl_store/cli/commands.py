"""The ``musecl`` command line: thin click adapters over the library.

Each command parses options, opens the store, calls one library function and prints the
result, as text for people or as JSON with ``--json``. The project's own errors (and the
database's operational ones: unreachable, full, locked) print one line and exit 1; anything
else is a bug: it prints as such, with the traceback for a report, and exits 2.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import replace
from typing import Any

import click
import numpy as np
from sqlalchemy.exc import InterfaceError, OperationalError

from musecl_store import __version__
from musecl_store.api import Store
from musecl_store.cli.csvfiles import read_points_csv, read_queries_csv
from musecl_store.errors import MuseclError
from musecl_store.settings import Settings, lock_timeout
from musecl_store.store.engine import resolve_url

BUG_EXIT = 2


def _database_error(exc: OperationalError | InterfaceError) -> str:
    """One line from the driver's message (server gone, disk full, locked ...)."""
    text = (str(exc.orig or exc).strip().splitlines() or ["unknown"])[0]
    if "connection" in text and ("failed" in text or "refused" in text):
        return f"cannot reach the database server ({text}); is it running?"
    return f"database error: {text}; nothing of this command was committed"


def _report_bug(exc: BaseException) -> None:
    click.echo(
        f"musecl: internal error ({type(exc).__name__}: {exc}). This is a bug in musecl, not "
        "in your input; please report it with the traceback below.",
        err=True,
    )
    click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout instead of text."
)
city_option = click.option(
    "--city", required=True, metavar="NAME", help="The city's name, as in its bundle's city.json."
)


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):  # numpy scalars from pandas frames
        return obj.item()
    return str(obj)


def emit(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=_plain))


def table(headers: list[str], rows: list[list[Any]], aligns: str = "") -> None:
    """Print rows under a header line, each column as wide as its widest cell.

    ``aligns``: one character per column, ``<`` (default) or ``>`` (numbers)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        parts = []
        for i, c in enumerate(r):
            a = aligns[i] if i < len(aligns) else "<"
            parts.append(c.rjust(widths[i]) if a == ">" else c.ljust(widths[i]))
        click.echo("  ".join(parts).rstrip())


def _db_here(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:  # `musecl CMD --db X` wins over `musecl --db Y CMD`
        store = ctx.find_object(Store)
        assert store is not None
        store.close()
        store.url = resolve_url(value, store.settings)


class _Group(click.Group):
    """Gives every command a ``--db`` option of its own, so that both ``musecl --db X cmd``
    and ``musecl cmd --db X`` work."""

    group_class = type  # sub-groups (db, index, regress ...) are _Groups too

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; sort what it raises into user errors (exit 1) and bugs (exit 2)."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except MuseclError as exc:
            raise click.ClickException(str(exc)) from exc
        except (OperationalError, InterfaceError) as exc:
            raise click.ClickException(_database_error(exc)) from exc
        except BrokenPipeError:  # `musecl ... | head`
            sys.stderr.close()
            ctx.exit(1)
        except Exception as exc:
            _report_bug(exc)
            ctx.exit(BUG_EXIT)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.append(
                click.Option(
                    ["--db"],
                    metavar="URL_OR_PATH",
                    expose_value=False,
                    callback=_db_here,
                    help="The store (as `musecl --db`; default ./musecl.sqlite or "
                    "MUSECL_DATABASE_URL).",
                )
            )
        super().add_command(cmd, name)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--db",
    metavar="URL_OR_PATH",
    envvar="MUSECL_DATABASE_URL",
    show_envvar=True,
    help="The store: a SpatiaLite file path (default ./musecl.sqlite) or a PostGIS URL "
    "such as postgresql+psycopg://user@host/dbname.",
)
@click.option(
    "--read-db",
    metavar="URL",
    envvar="MUSECL_READ_DATABASE_URL",
    show_envvar=True,
    help="Send reads (searches, features, exports, info) to this PostgreSQL streaming replica "
    "of --db; writes still go to --db.",
)
@click.option(
    "--lock-timeout",
    metavar="SECONDS",
    envvar="MUSECL_LOCK_TIMEOUT",
    show_envvar=True,
    help="How long a writing command waits for another writer to finish (default 600). It "
    "says on stderr that it waits.",
)
@click.version_option(__version__, prog_name="musecl")
@click.pass_context
def main(
    ctx: click.Context, db: str | None, read_db: str | None, lock_timeout: str | None
) -> None:
    """musecl — a region-embedding store for urban science, built on MuseCL.

    Ingest city bundles (regions, POIs, images, trips, indicators, census layers) into an
    embedded SpatiaLite file or a PostGIS database, and inspect what the store holds.

    \b
    Quick start:
      musecl demo-city ./demo --seed 0 --regions 600
      musecl ingest ./demo
      musecl train --city demo-0
      musecl evaluate --city demo-0 --log-target

    Exit codes: 0 success, 1 an error in the input or the store (the message names the file,
    line or argument), 2 a usage error (an unknown option, a missing argument) or a bug in
    musecl (printed as such, with a traceback to report).
    """
    settings = Settings.from_env()
    if lock_timeout is not None:
        settings = replace(settings, lock_timeout=_lock_timeout(lock_timeout))
    ctx.obj = Store(resolve_url(db, settings), settings, read_url=read_db)
    ctx.call_on_close(ctx.obj.close)  # in-process callers (tests, notebooks) get it back


def _lock_timeout(value: str) -> float:
    try:
        return lock_timeout(value)
    except MuseclError as exc:
        raise click.BadParameter(str(exc), param_hint="--lock-timeout") from exc


# ---------------------------------------------------------------------------- db


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


# ---------------------------------------------------------------------------- demo-city


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


# ---------------------------------------------------------------------------- ingest


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option(
    "--check",
    is_flag=True,
    help="Read, validate and diff the bundle, then roll back: report without writing.",
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


# ---------------------------------------------------------------------------- train, evaluate


@main.command()
@city_option
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="JSON file of training settings (see training/config.py for every key).",
)
@click.option(
    "--epochs", type=click.IntRange(1), help="Image-encoder epochs (overrides the config)."
)
@click.option("--seed", type=int, help="Random seed (overrides the config).")
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    help="Where runs keep their checkpoints and model files.",
)
@click.option("--restart", is_flag=True, help="Ignore a checkpoint of the same run and start over.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where to train: auto is cuda when torch sees a GPU, else cpu (the reproducible one).",
)
@click.option(
    "--nproc",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Train data-parallel on this many processes of this machine (DDP: gloo on CPUs, one "
    "GPU per process with NCCL). Batch sizes stay global: same seed, same model. Messages "
    "go to stderr.",
)
@json_option
@click.pass_obj
def train(
    store: Store,
    city: str,
    config_file: str | None,
    epochs: int | None,
    seed: int | None,
    checkpoint_dir: str | None,
    restart: bool,
    device: str,
    nproc: int,
    as_json: bool,
) -> None:
    """Train MuseCL on a city and store its region embeddings as a new model version.

    Region similarities (POI mix, mobility) pick contrastive triplets; ResNet-18 encoders
    learn remote tiles and street views with a triplet loss; a pre-trained text encoder
    embeds POI texts; attentive fusion is aligned to the text with InfoNCE. Every region gets
    remote, street, poi and fused embeddings and attention weights. A run checkpoints after
    every epoch and resumes from its last checkpoint when started again (a finished run is
    reused). The store is only read at the start and written at the end: training holds no
    transaction open.

    \b
    On several processes:
      musecl train --city demo-0 --nproc 4
      torchrun --nproc-per-node 4 -m training train --city demo-0   (the same; also across
      machines with torchrun's --nnodes and --rdzv-endpoint)
    Rank 0 writes the model version once every rank has finished; if a rank dies, the job
    fails, names it, and writes nothing (the same command resumes from the checkpoint).
    """
    overrides = {"epochs": epochs, "seed": seed, "checkpoint_dir": checkpoint_dir}
    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    result = store.train(
        city,
        config_file,
        **{k: v for k, v in overrides.items() if v is not None},
        resume=not restart,
        device=device,
        show_progress=False if as_json else None,
        log=log,
        nproc=nproc,
    )
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return  # one rank of torchrun: rank 0 reports
    if as_json:
        emit(result.to_dict())
    else:
        click.echo(
            f"model version {result.model_version_id} (revision {result.revision}) in "
            f"{result.seconds:.0f} s; weights {result.checkpoint}"
        )


@main.command()
@city_option
@click.option("--model-version", type=int, help="Model version to score (default: the active one).")
@click.option(
    "--indicator",
    "indicators",
    multiple=True,
    help="Indicator to score (repeatable; default: all of the city's).",
)
@click.option("--log-target", is_flag=True, help="Apply log1p to the targets (skewed counts).")
@click.option(
    "--folds", default=5, show_default=True, type=click.IntRange(2), help="Cross-validation folds."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the folds and MLP heads.")
@json_option
@click.pass_obj
def evaluate(
    store: Store,
    city: str,
    model_version: int | None,
    indicators: tuple[str, ...],
    log_target: bool,
    folds: int,
    seed: int,
    as_json: bool,
) -> None:
    """Score every embedding on every indicator: the paper's table.

    Rows: counts (log POI-category and trip counts, no learning), remote, street, poi,
    concat, add (remote+street), fused_visual (the model's fusion of the two visual
    embeddings only; left out when its model file cannot be read), fused (MuseCL) and
    counts+fused. Each is scored by k-fold cross-validation with the paper's MLP head
    (512-256-128-64) and with ridge: R², RMSE and MAPE, mean and spread over folds. The
    records are saved into the model version's metrics. A progress bar goes to stderr (on a
    terminal).
    """
    from musecl_store.downstream.evaluation import markdown_table

    records = store.evaluate(
        city,
        model_version=model_version,
        indicators=list(indicators) or None,
        log_target=log_target,
        folds=folds,
        seed=seed,
        show_progress=None,  # on stderr, so even --json keeps stdout clean
    ).to_dict("records")
    if as_json:
        emit(records)
    else:
        click.echo(markdown_table(records))


# ------------------------------------------------------------------ index, similar, features


def _coordinates(value: str | None, names: str, hint: str) -> tuple[float, ...] | None:
    """``geo.coordinates`` of an option's value; a bad one is a usage error (exit 2)."""
    from musecl_store.geo import coordinates

    if value is None:
        return None
    try:
        return coordinates(value, names)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from exc


kind_option = click.option(
    "--kind",
    default="fused",
    show_default=True,
    type=click.Choice(["fused", "remote", "street", "poi"]),
    help="Which embedding to use.",
)
model_option = click.option(
    "--model-version", type=int, help="Model version (default: the city's active one)."
)


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


_SEARCH_OPTIONS = [
    click.option(
        "-k", default=10, show_default=True, type=click.IntRange(1), help="How many regions."
    ),
    click.option(
        "--bbox",
        metavar="MINLON,MINLAT,MAXLON,MAXLAT",
        help="Only regions whose centroid lies in this box.",
    ),
    click.option(
        "--near", metavar="LON,LAT,KM", help="Only regions whose centroid is within KM of LON,LAT."
    ),
    click.option(
        "--polygon",
        metavar="WKT_OR_GEOJSON",
        help="Only regions whose centroid lies in this polygon (WKT or GeoJSON).",
    ),
    click.option("--same-city", is_flag=True, help="Only regions of the query's city."),
    click.option(
        "--other-cities", is_flag=True, help="Only regions of other cities than the query's."
    ),
    click.option(
        "--exclude-adjacent", is_flag=True, help="Leave out regions touching the query region."
    ),
    click.option("--geometry", is_flag=True, help="Include each region's GeoJSON geometry."),
    click.option(
        "--attention", is_flag=True, help="Include each region's fusion attention weights."
    ),
    model_option,
    kind_option,
]


def search_options(command: Any) -> Any:
    """The options `similar` and `similar-many` share: k, the filters, what to include."""
    for option in reversed(_SEARCH_OPTIONS):
        command = option(command)
    return command


def _search_keywords(
    bbox: str | None,
    near: str | None,
    same_city: bool,
    other_cities: bool,
    **rest: Any,
) -> dict[str, Any]:
    """The keywords of `Store.search` from the shared options (coordinates parsed: a bad
    one is a usage error naming the option)."""
    if same_city and other_cities:
        raise click.UsageError("--same-city and --other-cities exclude each other; pick one")
    return {
        "bbox": _coordinates(bbox, "MINLON,MINLAT,MAXLON,MAXLAT", "--bbox"),
        "near": _coordinates(near, "LON,LAT,KM", "--near"),
        "same_city": same_city,
        "other_cities": other_cities,
        **rest,
    }


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
    k: int,
    point: str | None,
    bbox: str | None,
    near: str | None,
    polygon: str | None,
    same_city: bool,
    other_cities: bool,
    exclude_adjacent: bool,
    geometry: bool,
    attention: bool,
    model_version: int | None,
    kind: str,
    as_json: bool,
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
    pt = _coordinates(point, "LON,LAT", "--point")
    if (region_id is None) == (pt is None):
        raise click.UsageError("give a REGION_ID or --point LON,LAT (one of them)")
    keywords = _search_keywords(
        bbox,
        near,
        same_city,
        other_cities,
        k=k,
        polygon=polygon,
        exclude_adjacent=exclude_adjacent,
        geometry=geometry,
        attention=attention,
        kind=kind,
        model_version=model_version,
    )
    hits = store.search(city, region_id, point=pt, **keywords)  # type: ignore[arg-type]
    if as_json:
        emit([h.to_dict() for h in hits])
        return
    if not hits:
        click.echo("no region passes the filters")
        return
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
@click.option("--out", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@json_option
@click.pass_obj
def similar_many(
    store: Store,
    city: str,
    queries: str,
    out: str | None,
    as_json: bool,
    bbox: str | None,
    near: str | None,
    same_city: bool,
    other_cities: bool,
    **options: Any,
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
    keywords = _search_keywords(bbox, near, same_city, other_cities, **options)
    if as_json:
        answers = store.search_many(city, ids, points, **keywords)
        failed = sum(a.error is not None for a in answers)
        text = json.dumps([a.to_dict() for a in answers], indent=2, ensure_ascii=False) + "\n"
    else:
        frame = store.similar_many(city, ids, points, **keywords)
        failed = int(frame["error"].notna().sum())  # one line per failed query
        text = frame.to_csv(index=False, float_format="%.7g")
    _write_out(out, text)
    if failed:
        click.echo(f"{failed} of the queries could not be answered (see error)", err=True)


def _write_out(out: str | None, text: str) -> None:
    """``text`` into the file ``--out`` names, or to stdout without one."""
    if out:
        try:
            with open(out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise click.ClickException(f"--out {out}: cannot write ({exc.strerror})") from exc
    else:
        click.echo(text, nl=False)


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
@click.option("--out", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
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
    ids = [r.strip() for r in regions.split(",") if r.strip()] if regions else None
    frame = store.features(city, ids, points=pts, kind=kind, model_version=model_version)
    if fmt == "csv":
        text = frame.to_csv(index=False, float_format="%.7g")
    else:
        vectors = frame[[c for c in frame.columns if c.startswith("e")]].to_numpy()
        text = json.dumps(
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
    _write_out(out, text)


# ------------------------------------------------------------------ embed, regress


@main.command()
@city_option
@click.option(
    "--model-version",
    type=int,
    required=True,
    help="The trained model version to embed the city with (frozen).",
)
@json_option
@click.pass_obj
def embed(store: Store, city: str, model_version: int, as_json: bool) -> None:
    """Embed every region of a city with an existing model version.

    Puts a second city into the space of a model trained on the first: cross-city search
    and indicator transfer need both cities under one model version.
    """
    result = store.embed(city, model_version, show_progress=False if as_json else None)
    if as_json:
        emit(result)
    else:
        click.echo(
            f"{city}: {result['embeddings']['fused']} regions embedded with model version "
            f"{model_version} (revision {result['revision']}; "
            f"{result['without_images']} without images left out)"
        )


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
def regress_fit(
    store: Store,
    city: str,
    indicator: str,
    head: str,
    log_target: bool,
    folds: int,
    model_version: int | None,
    kind: str,
    as_json: bool,
) -> None:
    """Fit a regressor of INDICATOR on a city's embeddings and store it."""
    out = store.regress(
        city,
        indicator,
        head=head,
        log_target=log_target,
        folds=folds,
        kind=kind,
        model_version=model_version,
        log=lambda msg: click.echo(msg, err=True),  # stderr: --json stdout stays clean
    )
    if as_json:
        emit(out)
    else:
        m = out["metrics"]
        click.echo(
            f"{out['regressor']}: {folds}-fold R² {m['r2']:.3f} ± {m['r2_std']:.3f}, RMSE "
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


# ------------------------------------------------------------------ census


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

    def split(v: str | None) -> list[str]:
        return [f.strip() for f in v.split(",") if f.strip()] if v else []

    result = store.census_join(city, layer, extensive=split(extensive), intensive=split(intensive))
    if as_json:
        emit(result.to_dict())
    else:
        click.echo(
            f"{result.values} values of {', '.join(result.extensive + result.intensive)} on "
            f"{result.regions} regions (revision {result.revision})"
        )


# ------------------------------------------------------------------ export, map


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
def map_command(
    store: Store,
    city: str,
    indicator: str | None,
    prediction: str | None,
    similar_to: str | None,
    out: str,
    k: int,
    width: int,
    model_version: int | None,
    as_json: bool,
) -> None:
    """Draw a choropleth PNG of an indicator, a prediction or the similarity to a region.

    A similarity map marks the query region (black outline and dot) and outlines its K most
    similar regions in red; the legend says which is which."""
    result = store.map(
        city,
        out,
        k=k,
        width=width,
        indicator=indicator,
        prediction=prediction,
        similar_to=similar_to,
        model_version=model_version,
    )
    if as_json:
        emit(result.to_dict())
    else:
        click.echo(
            f"wrote {result.path}: {result.title} ({result.with_value} of {result.regions} "
            f"regions, {result.vmin:.4g} .. {result.vmax:.4g})"
        )


# ------------------------------------------------------------------ reembed


@main.command()
@city_option
@click.option("--regions", metavar="ID,ID,...", help="Re-embed these regions (all modalities).")
@click.option(
    "--since",
    type=int,
    metavar="REVISION",
    help="Re-embed what the change log records after this store revision.",
)
@click.option("--all", "all_regions", is_flag=True, help="Re-embed every region (a full re-embed).")
@model_option
@json_option
@click.pass_obj
def reembed(
    store: Store,
    city: str,
    regions: str | None,
    since: int | None,
    all_regions: bool,
    model_version: int | None,
    as_json: bool,
) -> None:
    """Recompute the embeddings of changed regions with the frozen model, in seconds.

    By default: every region whose remote tiles, street views or POIs changed (the change
    log and content hashes say which) since its vectors were written, and every new region.
    Only the changed modalities are recomputed, then the fused vector; all is written in one
    transaction under a new revision, and the FAISS index is updated in place. Prints a drift
    report: how far each region moved and how its top-10 neighbours changed.
    """
    if sum([regions is not None, since is not None, all_regions]) > 1:
        raise click.UsageError("use at most one of --regions, --since and --all")
    ids = [r.strip() for r in regions.split(",") if r.strip()] if regions else None
    out = store.reembed(
        city,
        model_version=model_version,
        regions=ids,
        since=since,
        all_regions=all_regions,
        show_progress=False if as_json else None,
    )
    if as_json:
        emit(out)
        return
    if out["revision"] is None:
        click.echo(
            f"{city}: nothing to re-embed (model version {out['model_version']} is up to date)"
        )
        return
    rc = out["recomputed"]
    click.echo(
        f"{city}: re-embedded {out['regions']} regions at revision {out['revision']} "
        f"(remote {rc['remote']}, street {rc['street']}, poi {rc['poi']}, fused {rc['fused']});"
        f" index caught up {out['index']['caught_up']} rows"
    )
    for d in out["drift"][:20]:
        moved = "new" if d["cosine_distance"] is None else f"moved {d['cosine_distance']:.4f}"
        kept = (
            "" if d["neighbours_kept"] is None else f", {d['neighbours_kept']}/10 neighbours kept"
        )
        click.echo(f"  {d['region_id']}: {moved}{kept}")


# ------------------------------------------------------------------ models


@main.group()
def models() -> None:
    """Model versions: training adds one; one per city is active."""


@models.command("list")
@click.option("--city", default=None, metavar="NAME", help="Only this city's versions.")
@json_option
@click.pass_obj
def models_list(store: Store, city: str | None, as_json: bool) -> None:
    """List model versions with their embeddings and evaluation."""
    rows = store.models(city)
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no model version yet; `musecl train --city NAME` makes one")
        return
    table(
        ["active", "version", "city", "seed", "embeddings", "fused mean R²", "created"],
        [
            [
                "*" if r["active"] else "",
                r["model_version"],
                r["city"] or "-",
                r["seed"],
                r["embeddings"],
                "" if r["fused_mean_r2"] is None else f"{r['fused_mean_r2']:.3f}",
                r["created_at"],
            ]
            for r in rows
        ],
        "<><>>><",
    )


@models.command("activate")
@click.argument("version", type=int)
@json_option
@click.pass_obj
def models_activate(store: Store, version: int, as_json: bool) -> None:
    """Make VERSION the active model of its city."""
    out = store.activate_model(version)
    if as_json:
        emit(out)
    else:
        click.echo(f"model version {version} is now active")


@models.command("delete")
@click.argument("version", type=int)
@json_option
@click.pass_obj
def models_delete(store: Store, version: int, as_json: bool) -> None:
    """Delete VERSION, its embeddings, regressors and cached indexes (never the active one)."""
    out = store.delete_model(version)
    if as_json:
        emit(out)
    else:
        click.echo(f"deleted model version {version} and {out['embeddings_deleted']} embeddings")


# ---------------------------------------------------------------------------- info, cities


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


# ---------------------------------------------------------------------------- serve


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port."
)
@click.option(
    "--allow-writes",
    is_flag=True,
    help="Enable POST /api/ingest and /api/cities/{city}/reembed (they need --api-key).",
)
@click.option(
    "--api-key",
    envvar="MUSECL_API_KEY",
    show_envvar=True,
    metavar="KEY",
    help="The key write requests must send in the X-API-Key header.",
)
@click.option(
    "--tiles",
    metavar="URL",
    help="XYZ tile URL template for the map background, e.g. "
    "http://localhost:8080/{z}/{x}/{y}.png (default: a plain background).",
)
@click.option(
    "--bundle-root",
    type=click.Path(file_okay=False),
    help="With --allow-writes: POST /api/ingest reads bundles under this folder only "
    "(default: the working directory).",
)
@click.pass_obj
def serve(
    store: Store,
    host: str,
    port: int,
    allow_writes: bool,
    api_key: str | None,
    tiles: str | None,
    bundle_root: str | None,
) -> None:
    """Serve the store over HTTP: a JSON API (OpenAPI spec at /openapi.json, docs at /docs)
    and a map explorer at /.

    Read-only unless --allow-writes (with --api-key). Every bad request gets a 4xx JSON
    error {"error", "parameter"}. Stop it with Ctrl-C.
    """
    import uvicorn

    from musecl_store.server.app import create_app

    if allow_writes and not api_key:
        raise click.UsageError("--allow-writes needs --api-key (or MUSECL_API_KEY)")
    store.engine()  # fail now, with the reason, if the store cannot be opened
    app = create_app(
        store, allow_writes=allow_writes, api_key=api_key, tiles=tiles, bundle_root=bundle_root
    )
    click.echo(f"musecl serve: {store.shown_url} on http://{host}:{port}/ (Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
