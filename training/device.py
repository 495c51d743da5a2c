"""Where a run trains: the device named on the command line, and the precision on it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from musecl_store.errors import MuseclError

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(MuseclError, ValueError):
    """The device asked for does not exist on this machine."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when torch sees a GPU, else cpu; ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}") from exc
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    if device.type == "cuda":
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} was asked for but torch {torch.__version__} ({build}) sees no "
                "CUDA GPU; train with --device cpu (or auto), or install a CUDA build of torch "
                "on a machine with an NVIDIA GPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} does not exist: torch sees {torch.cuda.device_count()} CUDA "
                "GPU(s), numbered from 0"
            )
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; on the CPU nothing changes (float32, results as tested).
    Losses are computed outside it, in float32."""
    # GPUs older than Ampere have no bf16: they train in float32 rather than fail.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
