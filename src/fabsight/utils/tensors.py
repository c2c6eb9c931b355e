"""Writing tensors to ``.safetensors``: the one place every model file goes through.

safetensors refuses a tensor that is a view with strides (a transpose, a slice), and whether
a tensor is such a view depends on how it was made: a numpy array's memory order, a
framework's internal layout, the library version. A weights file that writes on one machine
and fails on the next is what a user meets first, so every write makes each tensor a
contiguous CPU copy here, and no caller has to remember it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write ``tensors`` (detached, on the CPU, contiguous) to the safetensors file ``path``."""
    from safetensors.torch import save_file

    save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(path))
