"""One exception hierarchy for the whole store. Each message names the bad input and the fix."""

from __future__ import annotations


class MuseclError(Exception):
    """Base class of every error musecl-store raises on purpose."""


class BundleError(MuseclError, ValueError):
    """A city bundle breaks the contract in a way that stops the ingest; nothing is written.

    Args:
        message: what is wrong and how to fix it.
        file: the bundle file at fault (relative to the bundle), if any.
        line: the 1-based line (CSV) or feature number (GeoJSON), if any.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        self.file = file
        self.line = line
        self.reason = message
        where = file or ""
        if file and line is not None:
            where = f"{file}:{line}"
        super().__init__(f"{where}: {message}" if where else message)


class BundleNotFoundError(BundleError, FileNotFoundError):
    """The bundle directory, or one of its required files, does not exist."""


class CityNotFoundError(MuseclError, LookupError):
    """No city of that name is in the store."""

    def __init__(self, name: str, known: list[str]):
        hint = f"known cities: {', '.join(known)}" if known else "the store holds no city yet"
        super().__init__(f"no city named {name!r} in the store ({hint}); ingest it first")


class SchemaError(MuseclError, RuntimeError):
    """The database schema is missing or at another migration than this code expects."""


class ImageChangedError(MuseclError, FileNotFoundError):
    """An image file moved or changed since it was ingested; re-ingest the bundle."""


class InputError(MuseclError, ValueError):
    """A user-supplied file or value that cannot be used (the message names file and line)."""


class SetupError(MuseclError, RuntimeError):
    """The store cannot be opened: an unsupported URL, a missing SpatiaLite module, a file
    that is not a database."""


class SettingError(MuseclError, ValueError):
    """An environment variable or option with a value that cannot be used."""


class LockTimeoutError(MuseclError, TimeoutError):
    """Another process held the store's write lock for longer than the lock timeout."""


class ReadOnlyDatabaseError(MuseclError, PermissionError):
    """A write sent to a database that only reads (a PostgreSQL hot standby)."""


class StoreWriteError(MuseclError, OSError):
    """The database refused a write for a reason outside musecl: a full disk, a read-only
    file, a lost connection. Nothing of the command's work was committed."""


class StoreNotFoundError(MuseclError, FileNotFoundError):
    """A SpatiaLite path with no file behind it, opened by a command that only reads."""
