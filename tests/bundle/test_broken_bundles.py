"""The corpus of broken bundles (tests/bundles/broken, one defect each; see make_corpus.py).

A fatal defect fails with a message naming it and leaves the store exactly as it was, even
when the store already holds the same city. A non-fatal one is ingested, and the summary
reports the defect with file and line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from musecl_store.errors import BundleError
from musecl_store.ingest.apply import ingest_bundle
from musecl_store.store.engine import transaction
from tests.conftest import BUNDLES, snapshot

CORPUS = sorted((BUNDLES / "broken").iterdir())


def test_the_corpus_is_large_enough() -> None:
    fatal = [d for d in CORPUS if json.loads((d / "expect.json").read_text())["fatal"]]
    assert len(CORPUS) >= 12 and len(fatal) >= 10


@pytest.mark.parametrize("bundle", CORPUS, ids=[d.name for d in CORPUS])
def test_broken_bundle(engine, tiny_bundle: Path, bundle: Path) -> None:  # type: ignore[no-untyped-def]
    expect = json.loads((bundle / "expect.json").read_text())
    with transaction(engine) as s:
        ingest_bundle(s, tiny_bundle)  # the store already holds a good version of the city
    before = snapshot(engine)
    if expect["fatal"]:
        with pytest.raises(BundleError) as err, transaction(engine) as s:
            ingest_bundle(s, bundle)
        assert re.search(expect["match"], str(err.value)), str(err.value)
        assert snapshot(engine) == before
    else:
        with transaction(engine) as s:
            summary = ingest_bundle(s, bundle)
        reported = [str(p) for p in summary.report.listed]
        assert any(re.search(expect["match"], m) for m in reported), reported
        assert summary.report.total() == len(reported)  # and nothing else was wrong
