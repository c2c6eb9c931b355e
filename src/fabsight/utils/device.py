"""One rule for ``--device cpu|cuda|auto`` across training and inference commands."""

from __future__ import annotations

from fabsight.errors import FabsightError


def resolve_device(device: str) -> str:
    """``auto`` → CUDA when present, else CPU; an unavailable or unknown device is a user error.

    ``cuda:N`` is accepted so a user can pick one GPU of several.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise FabsightError("--device", f"unknown device {device!r} (use cpu, cuda or auto)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FabsightError("--device", f"{device!r} asked for but no CUDA GPU is available (use cpu or auto)")
    return device
