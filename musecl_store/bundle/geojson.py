"""Reading a GeoJSON file of the bundle: whole, or feature by feature without holding the
document; its declared CRS checked against city.json's; its polygons checked to land on the
globe and repaired."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS
from shapely.geometry import MultiPolygon

from musecl_store import geo
from musecl_store.bundle.files import JsonValueError, inside, json_constant, json_float, load_json
from musecl_store.errors import BundleError


def check_geojson_crs(doc: dict[str, Any], name: str, crs: CRS) -> None:
    """Old-style GeoJSON may name a CRS; it must agree with city.json's."""
    member = doc.get("crs")
    if member is None:
        return
    props = member.get("properties") if isinstance(member, dict) else None
    declared = props.get("name") if isinstance(props, dict) else None
    if declared is None:
        return  # no named CRS (GeoJSON's default, or a linked one): city.json's applies
    if not isinstance(declared, str):
        raise BundleError(
            f'"crs" names {geo.short(declared)}; a CRS name is a string such as "EPSG:4326"',
            file=name,
        )
    try:
        other = geo.parse_crs(declared)
    except ValueError as exc:
        raise BundleError(str(exc), file=name) from exc
    if not geo.same_crs(other, crs):
        raise BundleError(
            f"declares CRS {declared!r} but city.json says {crs.to_string()!r}; make them agree "
            '(set "crs" in city.json to the CRS the coordinates are in)',
            file=name,
        )


def features(root: Path, name: str, crs: CRS) -> list[Any]:
    """The features of a GeoJSON FeatureCollection (or the one Feature), read whole."""
    doc = load_json(root, name)
    if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
        raise BundleError("expected a GeoJSON FeatureCollection", file=name)
    check_geojson_crs(doc, name, crs)
    feats = doc.get("features", []) if doc["type"] == "FeatureCollection" else [doc]
    if not isinstance(feats, list):
        raise BundleError('"features" must be a list', file=name)
    return feats


class NotStreamable(Exception):
    """A GeoJSON file that is not a plain FeatureCollection to read front to back (or that
    is broken): it is read whole instead, which also gives the exact error."""


_JSON_WS = re.compile(r"[ \t\n\r]*")
_READ = 1 << 20


class _JsonStream:
    """JSON values read one at a time from a text file, a piece of the file in memory."""

    def __init__(self, f: Any):
        self.f, self.buf, self.pos = f, "", 0
        self.decoder = json.JSONDecoder(parse_constant=json_constant, parse_float=json_float)

    def _fill(self) -> bool:
        """Read more of the file (as much again as is held, so that a long value costs
        linear time); False at the end of the file."""
        chunk = self.f.read(max(_READ, len(self.buf) - self.pos))
        if not chunk:
            return False
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            self.pos = _JSON_WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def take(self, chars: str) -> str:
        """The next character, which must be one of ``chars``."""
        c = self.peek()
        if not c or c not in chars:
            raise NotStreamable
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                v, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self._fill():
                    continue  # cut off by the end of the piece
                raise
            if end >= len(self.buf) and self._fill():
                continue  # a number may go on in the next piece
            self.pos = end
            return v


def stream_features(root: Path, name: str, crs: CRS) -> Iterator[Any]:
    """The features of a GeoJSON FeatureCollection, one at a time, without holding the
    whole document; raises :class:`NotStreamable` for anything but a well-formed
    ``{..., "type": "FeatureCollection", ..., "features": [...], ...}`` whose "type" (and
    "crs") come before its features."""
    try:
        f = inside(root, name).open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise NotStreamable from exc
    with f:
        s = _JsonStream(f)
        try:
            yield from _stream_collection(s, name, crs)
        except (ValueError, RecursionError, JsonValueError) as exc:
            raise NotStreamable from exc


def _stream_collection(s: _JsonStream, name: str, crs: CRS) -> Iterator[Any]:
    s.take("{")
    head: dict[str, Any] = {}
    done = False
    while True:
        key = s.value()
        if not isinstance(key, str) or (done and key in ("type", "crs", "features")):
            raise NotStreamable
        s.take(":")
        if key == "features":
            if head.get("type") != "FeatureCollection" or s.peek() != "[":
                raise NotStreamable
            check_geojson_crs(head, name, crs)
            s.take("[")
            if s.peek() == "]":
                s.take("]")
            else:
                while True:
                    yield s.value()
                    if s.take(",]") == "]":
                        break
            done = True
        else:
            head[key] = s.value()
        if s.take(",}") == "}":
            break
    if not done or s.peek():
        raise NotStreamable


def check_lonlat(g: Any, name: str, crs: CRS, raw: Any, line: int | None = None) -> None:
    """Fatal when a reprojected geometry is not on the globe: the bundle's CRS is wrong."""
    minx, miny, maxx, maxy = g.bounds
    if not geo.lonlat_ok(np.array([minx, maxx]), np.array([miny, maxy])).all():
        x, y = raw.bounds[:2]
        raise BundleError(
            f"coordinates such as ({x:.6g}, {y:.6g}) are not longitude/latitude once read as "
            f'{crs.to_string()}; the CRS is wrong — set "crs" in city.json to the CRS of the '
            "data",
            file=name,
            line=line,
        )


def fix(g: Any, name: str, line: int) -> tuple[MultiPolygon, str | None]:
    """``geo.fix_polygon`` of a feature; GEOS failing on a degenerate shape is a BundleError."""
    try:
        return geo.fix_polygon(g)
    except shapely.errors.GEOSException as exc:
        raise BundleError(f"cannot repair the polygon ({exc})", file=name, line=line) from exc
