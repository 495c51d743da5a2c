"""The ``musecl`` command line: thin click commands over :class:`musecl_store.api.Store`.

:func:`main` is the click group (:mod:`.group`); importing this package registers every
command on it, one module per concern: :mod:`.data` (the store and its data), :mod:`.model`
(training and model versions), :mod:`.query` (indexes, searches, features),
:mod:`.downstream` (regressors, exports, maps) and :mod:`.serve` (the HTTP server).
"""

from musecl_store.cli import data, downstream, model, query, serve  # noqa: F401  (registers)
from musecl_store.cli.group import main

__all__ = ["main"]
