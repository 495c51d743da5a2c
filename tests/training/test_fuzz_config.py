"""Hostile training configs, generated: property-based fuzzing (hypothesis) of
``TrainConfig.from_dict`` and ``TrainConfig.from_file``. Each gives a valid config (one that
round-trips and is storable as JSON) or raises a ``ConfigError`` that is a ``ValueError``, with a
one-line message naming the file.

Settings, shared strategies and fixtures: tests/fuzzing.py. Cases per test:

    test_train_config_from_dict_fuzz ............... 800
    test_train_config_from_file_fuzz ............... 300
    total .......................................... 1100
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import JSON, RAW_JSON, TEXT, assert_project_error, cases, dumps
from training.config import ConfigError, TrainConfig

CONFIG_VALUES = st.one_of(
    JSON,
    st.sampled_from(
        [
            0,
            1,
            -1,
            2.5,
            float("nan"),
            float("inf"),
            10**30,
            True,
            "",
            "infonce",
            "triplet",
            "small",
            "poi",
            {"remote": "poi"},
            {"remote": "poi", "street": "mobility"},
            {"remote": None},
            {"aerial": "poi"},
            {"remote": 5},
        ]
    ),
)
CONFIG_KEYS = st.sampled_from([*TrainConfig.keys(), "epoch", "", "\x00"]) | TEXT


@cases(800)
@given(values=st.dictionaries(CONFIG_KEYS, CONFIG_VALUES, max_size=4) | JSON)
def test_train_config_from_dict_fuzz(values: Any) -> None:
    try:
        cfg = TrainConfig.from_dict(values, "cfg.json")
    except ConfigError as exc:
        assert_project_error(exc, "cfg.json")
        return
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict(), allow_nan=False)  # storable as the model version's config


@cases(300)
@given(
    content=st.one_of(
        st.dictionaries(CONFIG_KEYS, CONFIG_VALUES, max_size=3).map(dumps),
        RAW_JSON,
        st.just(b"{}"),
    ),
    override=st.sampled_from([None, 1, -3, "x"]),
)
def test_train_config_from_file_fuzz(scratch: Path, content: bytes, override: Any) -> None:
    path = Path(tempfile.mkstemp(dir=scratch, suffix=".json")[1])
    try:
        path.write_bytes(content)
        try:
            TrainConfig.from_file(path, epochs=override)
        except ConfigError as exc:
            assert_project_error(exc, str(path))
    finally:
        path.unlink()


def test_train_config_from_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        TrainConfig.from_file(tmp_path)
    (tmp_path / "latin.json").write_bytes(b'{"text_model": "caf\xe9"}')
    with pytest.raises(ConfigError, match=r"latin\.json: not valid UTF-8"):
        TrainConfig.from_file(tmp_path / "latin.json")
