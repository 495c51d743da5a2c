"""Named points in every writing command where the crash tests kill or pause the process.

The library calls :func:`point` at each step (``ingest:regions``, ``train:written``,
``reembed:committed`` ...). In an ordinary process that call does nothing: no environment
variable, file or flag turns it on. Only code that calls :func:`install` (the test driver
``tests/faultcli.py``, which is not part of the package) gets a hook called at each point, so
a user's environment can never make musecl kill itself or create files.
"""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[str], None] | None = None

POINTS: dict[str, tuple[str, ...]] = {
    "ingest": (
        "ingest:read",
        "ingest:regions",
        "ingest:modalities",
        "ingest:census",
        "ingest:written",
        "ingest:committed",
    ),
    "train": ("train:read", "train:epoch", "train:fitted", "train:written", "train:committed"),
    "embed": ("embed:encoded", "embed:written", "embed:committed"),
    "reembed": (
        "reembed:planned",
        "reembed:images_encoded",
        "reembed:texts_encoded",
        "reembed:written",
        "reembed:committed",
        "reembed:index_updated",
    ),
    "activate": ("models:activated", "models:activate_committed"),
    "delete": ("models:deleted", "models:delete_committed"),
    "index": ("index:written", "index:published"),
    "census": ("census:written", "census:committed"),
    "regress": ("regress:fitted", "regress:written", "regress:committed"),
    "predict": ("predict:written", "predict:committed"),
}
"""Every fault point, by command: what the kill-at-every-step tests walk through."""


def point(name: str) -> None:
    """Mark a step of a writing command (a no-op unless a test installed a hook)."""
    if _hook is not None:
        _hook(name)


def install(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(name)`` at every fault point from now on (``None`` removes it). For tests."""
    global _hook
    _hook = hook
