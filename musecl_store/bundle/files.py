"""The bundle's file names, the store's limits on its text, and reading a file of the bundle:
refused when it leaves the bundle folder, decoded as UTF-8, parsed as strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from musecl_store.errors import BundleError
from musecl_store.text import bad_char

CITY = "city.json"
REGIONS = "regions.geojson"
BOUNDARY = "boundary.geojson"
POIS = "pois.csv"
TRIPS = "trips.csv"
IMAGES = "images.csv"
INDICATORS = "indicators.csv"
CENSUS_DIR = "census"

MAX_REGION_ID = 100
MAX_NAME = 200  # the store's limit on city names, poi_ids, categories, indicator/layer names
MAX_CRS_NAME = 64  # the store's limit on a CRS name; a longer one is stored as its EPSG code


def is_file(path: Path) -> bool:
    """``path.is_file()`` that says False, not raises, for a name the OS refuses (too long)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def inside(root: Path, name: str) -> Path:
    """``root / name``, refused when it leaves the bundle through a symbolic link (to the
    file, or to a folder on its way): the bundle is read as one self-contained folder."""
    path = root / name
    try:
        real, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise BundleError(f"cannot be resolved ({exc})", file=name) from exc
    if not real.is_relative_to(base):
        raise BundleError(
            f"is a symbolic link to {str(real)!r}, outside the bundle; the bundle must hold "
            "its files (copy the file into the bundle folder)",
            file=name,
        )
    return path


def unstorable(value: Any) -> str | None:
    """Where a JSON value holds text the store cannot hold (in a key or a string), as
    ``"<path> holds <what>"``, or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        at, v = stack.pop()
        if isinstance(v, str):
            bad = bad_char(v)
            if bad:
                return f"{at or 'the value'} holds {bad}"
        elif isinstance(v, dict):
            for k, x in v.items():
                bad = bad_char(str(k))
                if bad:
                    return f"a key in {at or 'the object'} holds {bad}"
                stack.append((f"{at}.{k}" if at else str(k), x))
        elif isinstance(v, list):
            stack.extend((f"{at}[{i}]", x) for i, x in enumerate(v))
    return None


class JsonValueError(Exception):
    """A JSON value the bundle refuses (raised from the decoder's hooks)."""


def json_constant(token: str) -> Any:
    raise JsonValueError(f"{token} is not valid JSON; write null for a missing number")


def json_float(token: str) -> float:
    x = float(token)
    if not math.isfinite(x):
        raise JsonValueError(f"the number {token[:40]} is too large for a double")
    return x


def load_json(root: Path, name: str) -> Any:
    """The whole JSON document in the bundle file ``name``.

    Raises:
        BundleError: the file cannot be read, is not UTF-8, or is not strict JSON.
    """
    path = inside(root, name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read the file ({exc.strerror or exc})", file=name) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BundleError(
            f"not valid UTF-8 ({exc.reason} at byte {exc.start}); save the file as UTF-8",
            file=name,
            line=line,
        ) from exc
    try:
        return json.loads(text, parse_constant=json_constant, parse_float=json_float)
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"invalid JSON: {exc.msg} (column {exc.colno})", file=name, line=exc.lineno
        ) from exc
    except JsonValueError as exc:
        raise BundleError(f"invalid JSON: {exc}", file=name) from exc
    except ValueError as exc:  # an integer past Python's 4300-digit conversion limit
        raise BundleError(f"invalid JSON: a number is too long ({exc})", file=name) from exc
    except RecursionError as exc:
        raise BundleError("invalid JSON: nested too deeply", file=name) from exc
