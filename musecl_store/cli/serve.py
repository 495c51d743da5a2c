"""``musecl serve``: the store over HTTP (the JSON API and the map explorer)."""

from __future__ import annotations

import click

from musecl_store.api import Store
from musecl_store.cli.group import main


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
