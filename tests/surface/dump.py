"""The user-facing surfaces that a refactor must keep: the OpenAPI document (descriptions
aside), the CLI's commands and options, and the Python API's names.

``python tests/surface/dump.py`` rewrites the committed copies beside this file; do that
only for a change of interface that is meant (and say so in the commit)."""

from __future__ import annotations

import inspect
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

HERE = Path(__file__).parent


def _strip(doc: Any) -> Any:
    """The document without prose: descriptions may be reworded, nothing else may change."""
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k != "description"}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def openapi() -> dict[str, Any]:
    from musecl_store.api import open as open_store
    from musecl_store.server.app import create_app

    with (
        tempfile.TemporaryDirectory() as d,
        open_store(f"sqlite:///{d}/s.sqlite", index_dir=Path(d) / "ix") as s,
    ):
        s.init()
        doc = create_app(s).openapi()
    return dict(_strip(doc))


def cli() -> dict[str, Any]:
    from musecl_store.cli import main

    def walk(cmd: click.Command, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            path: [
                {
                    "name": p.name,
                    "opts": sorted([*p.opts, *p.secondary_opts]),
                    "type": p.type.name,
                    "required": p.required,
                    "multiple": p.multiple,
                    "default": None if callable(p.default) else repr(p.default),
                }
                for p in cmd.params
            ]
        }
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                out.update(walk(sub, f"{path} {name}"))
        return out

    return walk(main, "musecl")


def python() -> dict[str, Any]:
    import musecl_store
    from musecl_store.api import Store

    return {
        "musecl_store": sorted(musecl_store.__all__),
        "Store": {
            n: str(inspect.signature(getattr(Store, n)))
            for n in sorted(dir(Store))
            if not n.startswith("_") and callable(getattr(Store, n))
        },
    }


SURFACES = {"openapi": openapi, "cli": cli, "python": python}


if __name__ == "__main__":
    for name, make in SURFACES.items():
        (HERE / f"{name}.json").write_text(json.dumps(make(), indent=1, sort_keys=True) + "\n")
    print("wrote", ", ".join(f"{n}.json" for n in SURFACES), file=sys.stderr)
