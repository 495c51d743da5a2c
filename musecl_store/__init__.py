"""musecl-store: a region-embedding store with a query API, built on MuseCL.

The public surface is :func:`open` and the :class:`Store` it returns::

    import musecl_store
    with musecl_store.open("musecl.sqlite") as store:
        store.similar("demo-0", "8844c0a301fffff", k=5)
"""

from musecl_store.api import Store, open
from musecl_store.db import create_engine, open_engine, resolve_url, transaction
from musecl_store.errors import BundleError, CityNotFoundError, MuseclError, SchemaError
from musecl_store.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "CityNotFoundError",
    "MuseclError",
    "SchemaError",
    "Settings",
    "Store",
    "__version__",
    "create_engine",
    "open",
    "open_engine",
    "resolve_url",
    "transaction",
]
