"""musecl-store: a region-embedding store with a query API, built on MuseCL.

The public surface is :func:`open` and the :class:`Store` it returns::

    import musecl_store
    with musecl_store.open("musecl.sqlite") as store:
        store.similar("demo-0", "8844c0a301fffff", k=5)

Importing this package imports nothing else: each name below is loaded on first use, so that
``import musecl_store.geo`` (or the trainer's ``musecl_store.__version__``) does not run the
facade. The sub-packages are the architecture; ``docs/layout.md`` maps them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "open": "musecl_store.api",
    "Store": "musecl_store.api",
    "create_engine": "musecl_store.store.engine",
    "open_engine": "musecl_store.store.engine",
    "resolve_url": "musecl_store.store.engine",
    "transaction": "musecl_store.store.engine",
    "BundleError": "musecl_store.errors",
    "CityNotFoundError": "musecl_store.errors",
    "MuseclError": "musecl_store.errors",
    "SchemaError": "musecl_store.errors",
    "Settings": "musecl_store.settings",
}

__all__ = ["__version__", *sorted(_LAZY)]

if TYPE_CHECKING:
    from musecl_store.api import Store as Store
    from musecl_store.api import open as open
    from musecl_store.errors import BundleError as BundleError
    from musecl_store.errors import CityNotFoundError as CityNotFoundError
    from musecl_store.errors import MuseclError as MuseclError
    from musecl_store.errors import SchemaError as SchemaError
    from musecl_store.settings import Settings as Settings
    from musecl_store.store.engine import create_engine as create_engine
    from musecl_store.store.engine import open_engine as open_engine
    from musecl_store.store.engine import resolve_url as resolve_url
    from musecl_store.store.engine import transaction as transaction

def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'musecl_store' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
