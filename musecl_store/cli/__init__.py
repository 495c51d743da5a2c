"""The ``musecl`` command line: thin click commands over :class:`musecl_store.api.Store`."""

from musecl_store.cli.commands import main

__all__ = ["main"]
