"""The options several commands share, as decorators, and the reading of list values.

The search filters' options (``--bbox``, ``--near`` ...) are made from
:data:`musecl_store.search.filters.FILTER_FIELDS`, so their names, metavars, help and
flag-ness are described once; their values go to the search as typed, which checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from musecl_store.search.filters import FILTER_FIELDS, FilterField
from musecl_store.store.tables import EMBEDDING_KINDS

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout instead of text."
)
city_option = click.option(
    "--city", required=True, metavar="NAME", help="The city's name, as in its bundle's city.json."
)
kind_option = click.option(
    "--kind",
    default=EMBEDDING_KINDS[0],
    show_default=True,
    type=click.Choice(EMBEDDING_KINDS),
    help="Which embedding to use.",
)
model_option = click.option(
    "--model-version", type=int, help="Model version (default: the city's active one)."
)
out_option = click.option(
    "--out", type=click.Path(dir_okay=False), help="Write here instead of stdout."
)


def _filter_option(field: FilterField) -> Callable[[F], F]:
    if field.takes == "flag":
        return click.option(field.option, is_flag=True, help=field.help)
    return click.option(field.option, metavar=field.metavar, help=field.help)


_SEARCH_OPTIONS = [
    click.option(
        "-k", default=10, show_default=True, type=click.IntRange(1), help="How many regions."
    ),
    *(_filter_option(field) for field in FILTER_FIELDS),
    click.option("--geometry", is_flag=True, help="Include each region's GeoJSON geometry."),
    click.option(
        "--attention", is_flag=True, help="Include each region's fusion attention weights."
    ),
    model_option,
    kind_option,
]


def search_options(command: F) -> F:
    """The options `similar` and `similar-many` share: k, the filters, what to include,
    the model version and kind; their values are the keywords of ``Store.search``."""
    for option in reversed(_SEARCH_OPTIONS):
        command = option(command)
    return command


def comma_list(value: str | None) -> list[str] | None:
    """The items of an ``ID,ID,...`` value, stripped, empty ones dropped; None without one."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
