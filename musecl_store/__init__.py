"""musecl-store: a region-embedding store with a query API, built on MuseCL.

The public surface is small: open a store, ingest a city bundle, read summaries back.
"""

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
    "__version__",
    "create_engine",
    "open_engine",
    "resolve_url",
    "transaction",
]
