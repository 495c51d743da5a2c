"""The musecl CLI: help everywhere, JSON for machines, clear errors, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from musecl_store.cli import main
from tests.conftest import BUNDLES


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out.extend(all_commands(cmd, (*prefix, name)))
    return out


def run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("path", all_commands(main), ids=lambda p: " ".join(p))
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    assert cmd.help and len(cmd.help.strip()) > 20, f"`musecl {' '.join(path)}` needs help text"
    result = run(*path, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
    for param in cmd.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"`musecl {' '.join(path)}` option {param.opts} needs help"


def test_top_level_help_and_version() -> None:
    result = run("--help")
    assert "Quick start" in result.output and "--db" in result.output
    assert run("--version").output.startswith("musecl, version")


def test_db_init_ingest_info_cities_json(db_url: str, tiny_bundle: Path) -> None:
    init = json.loads(run("--db", db_url, "db", "init", "--json").output)
    assert init["to"] == init["from"]  # the fixture database is already at head
    status = json.loads(run("--db", db_url, "db", "status", "--json").output)
    assert status["up_to_date"] is True

    checked = json.loads(
        run("--db", db_url, "ingest", str(tiny_bundle), "--check", "--json").output
    )
    assert checked["checked_only"] and checked["regions"]["added"] == 6
    assert json.loads(run("--db", db_url, "cities", "--json").output) == []  # --check wrote nothing

    first = json.loads(run("--db", db_url, "ingest", str(tiny_bundle), "--json").output)
    assert first["changed"] and first["regions"]["added"] == 6 and first["problems"]["skipped"] == 0
    again = json.loads(run("--db", db_url, "ingest", str(tiny_bundle), "--json").output)
    assert not again["changed"] and again["revision"] is None

    info = json.loads(run("--db", db_url, "info", "--city", "tiny", "--json").output)
    assert (
        info["regions"] == 6 and info["pois"] == 15 and info["images"] == {"remote": 4, "street": 2}
    )
    assert info["trips"] == 9 and info["indicators"] == {"crime": 5, "population_density": 6}
    assert info["store_revision"] == first["revision"]
    cities = json.loads(run("--db", db_url, "cities", "--json").output)
    assert [c["city"] for c in cities] == ["tiny"] and cities[0]["regions"] == 6

    text = run("--db", db_url, "info", "--city", "tiny").output
    assert "regions      6" in text


def test_reported_rows_show_file_line_and_reason(db_url: str) -> None:
    result = run("--db", db_url, "ingest", str(BUNDLES / "broken" / "unparsable_poi_lon"))
    assert result.exit_code == 0
    assert "pois.csv: unparsable coordinate (skipped) x1" in result.output
    assert "pois.csv:3: lon 'abc' is not a number (skipped)" in result.output


def test_errors_exit_1_with_the_cause(db_url: str, tmp_path: Path) -> None:
    bad = CliRunner().invoke(
        main, ["--db", db_url, "ingest", str(BUNDLES / "broken" / "missing_poi_column")]
    )
    assert bad.exit_code == 1
    assert "pois.csv:1: missing required column(s) category" in bad.output
    nocity = CliRunner().invoke(main, ["--db", db_url, "info", "--city", "atlantis"])
    assert nocity.exit_code == 1 and "no city named 'atlantis'" in nocity.output
    wrong = CliRunner().invoke(main, ["--db", "mysql://x@y/z", "cities"])
    assert wrong.exit_code == 1 and "unsupported database URL" in wrong.output


def test_demo_city_command(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = json.loads(
        run("demo-city", str(out), "--seed", "2", "--regions", "20", "--json").output
    )
    assert result["counts"]["regions"] > 10 and (out / "city.json").is_file()
    assert set(result["latent_r2"]) == {
        "population_density",
        "housing_density",
        "crime",
        "poi_count",
    }
    again = CliRunner().invoke(main, ["demo-city", str(out)])
    assert again.exit_code == 1 and "--force" in again.output


def test_default_store_is_a_spatialite_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_bundle: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MUSECL_DATABASE_URL", raising=False)
    assert run("ingest", str(tiny_bundle)).exit_code == 0
    assert (tmp_path / "musecl.sqlite").is_file()
    assert "tiny" in run("cities").output
