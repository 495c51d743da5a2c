"""A refactor changes nothing users call: the OpenAPI document (apart from descriptions),
the CLI's commands and options, and the Python API's names and signatures are equal to the
committed copies (rewrite them with ``python tests/surface/dump.py`` only for a meant
change of interface)."""

from __future__ import annotations

import json

import pytest

from tests.surface.dump import HERE, SURFACES


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_surface_is_unchanged(name: str) -> None:
    want = json.loads((HERE / f"{name}.json").read_text())
    got = json.loads(json.dumps(SURFACES[name]()))
    assert got == want, f"the {name} surface changed; see tests/surface/dump.py"
