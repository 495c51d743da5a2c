"""The ``musecl`` group: its global options (``--db``, ``--read-db``, ``--lock-timeout``,
``--version``), the store it opens for every command, and how a command's failure becomes
an exit code.

The project's own errors (and the database's operational ones: unreachable, full, locked)
print one line and exit 1; a search error that names its parameter is a usage error naming
the command's option, exit 2, as click's own; anything else is a bug: it prints as such,
with the traceback for a report, and exits 2.
"""

from __future__ import annotations

import re
import sys
import traceback
from dataclasses import replace
from typing import Any

import click
from sqlalchemy.exc import InterfaceError, OperationalError

from musecl_store import __version__
from musecl_store.api import Store
from musecl_store.errors import MuseclError
from musecl_store.search.filters import SearchError
from musecl_store.settings import Settings, lock_timeout
from musecl_store.store.engine import resolve_url

BUG_EXIT = 2

_KEYWORD = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b")  # same_city, model_version ...


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


def _usage_error(ctx: click.Context, exc: SearchError) -> click.UsageError | None:
    """The usage error that says ``exc`` with the command's options for the search's
    keywords (``--same-city`` for ``same_city``), or None when the command has no option
    for the parameter at fault."""
    options = {p.name: p.opts[0] for p in ctx.command.params if isinstance(p, click.Option)}
    option = options.get(exc.parameter or "")
    if option is None:
        return None
    # The search prefixes a value's complaint with its keyword; the hint names the option.
    message = str(exc).removeprefix(f"{exc.parameter}: ")
    message = _KEYWORD.sub(lambda m: options.get(m.group(), m.group()), message)
    if re.search(rf"(?<![\w-]){re.escape(option)}\b", message):
        return click.UsageError(message, ctx)  # it names its options already
    return click.BadParameter(message, ctx, param_hint=option)


class _Command(click.Command):
    """A command whose search errors that name a parameter are usage errors naming its
    option (exit 2); other search errors go on to the group (exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SearchError as exc:
            usage = _usage_error(ctx, exc)
            if usage is None:
                raise
            raise usage from exc


def _db_here(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:  # `musecl CMD --db X` wins over `musecl --db Y CMD`
        store = ctx.find_object(Store)
        assert store is not None
        store.close()
        store.url = resolve_url(value, store.settings)


class _Group(click.Group):
    """Gives every command a ``--db`` option of its own, so that both ``musecl --db X cmd``
    and ``musecl cmd --db X`` work."""

    command_class = _Command
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
def main(ctx: click.Context, db: str | None, read_db: str | None, lock_timeout: str | None) -> None:
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
