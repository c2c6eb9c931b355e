"""One rule for ``--device cpu|cuda|auto`` across training and inference commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def reproducible_cudnn() -> Iterator[None]:
    """cuDNN in deterministic mode, restored afterwards: a training seed then gives the same network
    on a GPU too. By default cuDNN may pick a different convolution algorithm run to run (some sum
    in a nondeterministic order), and one DeepPCB teacher scored 88.9 % and 91.3 % from the same
    seed. A no-op on a CPU; usable as a decorator."""
    import torch

    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
