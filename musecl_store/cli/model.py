"""Commands about models: ``train``, ``evaluate``, ``embed``, ``reembed`` and
``models list/activate/delete``."""

from __future__ import annotations

import os

import click

from musecl_store.api import Store
from musecl_store.cli.group import main
from musecl_store.cli.options import city_option, comma_list, json_option, model_option
from musecl_store.cli.output import emit, table


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
    out = store.reembed(
        city,
        model_version=model_version,
        regions=comma_list(regions),
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
