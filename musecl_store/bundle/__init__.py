"""The city bundle (docs/city-bundle.md): one reader per bundle file, the problems report,
and the content hashes that tell an unchanged bundle from a changed one.

:func:`read_bundle` reads a whole bundle into a :class:`Bundle`; what it could live with is
in the bundle's :class:`Report`."""

from musecl_store.bundle.reader import Bundle, read_bundle
from musecl_store.bundle.report import Report

__all__ = ["Bundle", "Report", "read_bundle"]
