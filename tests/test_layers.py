"""The folders are the architecture: the import-linter contract in pyproject.toml (front
ends -> facade -> trainer -> rooms -> store -> leaves) holds, so a back-arrow fails CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_layer_contract_is_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def test_importing_the_package_loads_nothing_else() -> None:
    """``import musecl_store`` runs no sub-package (the facade loads on first use), and the
    trainer does not import the facade."""
    code = (
        "import sys, musecl_store, training.trainer, training.launch;"
        "print(musecl_store.__version__);"
        "print(sorted(m for m in sys.modules if m == 'musecl_store.api'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "0.1.0"
    assert out[1] == "[]"
