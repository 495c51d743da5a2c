"""The ``musecl`` CLI with the crash tests' fault hook installed: ``python -m tests.faultcli``.

The package's fault points (:mod:`musecl_store.faults`) do nothing in an ordinary process;
this driver, which ships with the tests and not with the package, turns them on:

- ``MUSECL_FAULT=<point>`` SIGKILLs the process at that point (no cleanup, as a power cut);
- ``MUSECL_PAUSE=<point>:<marker file>:<seconds>`` creates the marker and sleeps there, so a
  test can act while the command is caught mid-transaction;
- ``MUSECL_FAULT_TRACE=<file>`` appends the name of every point reached, so a test can check
  that it walked through all of a command's points.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from musecl_store import faults
from musecl_store.cli import main


def hook(name: str) -> None:
    trace = os.environ.get("MUSECL_FAULT_TRACE")
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(name + "\n")
    if os.environ.get("MUSECL_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get("MUSECL_PAUSE", "").rsplit(":", 2)
    if len(pause) == 3 and pause[0] == name:
        Path(pause[1]).touch()
        time.sleep(float(pause[2]))


if __name__ == "__main__":
    faults.install(hook)
    sys.exit(main())
