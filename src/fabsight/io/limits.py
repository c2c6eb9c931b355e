"""How big a file's declared sizes may be before a reader allocates anything for them.

Every wafer-data and image reader checks the sizes a file *declares* (a die-index span, a
row count, an array shape in an ``.npy`` header, an image's width × height, a zip
member's uncompressed size) against these limits before it builds the array, so a
40-byte file cannot ask for gigabytes. A file over a limit is a
:class:`fabsight.errors.FormatError` naming the file, the size and the variable that
raises the limit.

The defaults are far above real data: WM-811K grids go to 212 × 204 dies, the largest
real KLARF fixture has 22 k defects, MixedWM38 holds 52 × 52 maps and the real die
images are at most 640 × 640 pixels. Each limit can be changed per process with an
environment variable (read at every call, so a service or a test can set it at any time)::

    FABSIGHT_MAX_GRID_SIDE=8000 FABSIGHT_MAX_GRID_DIES=20000000 fabsight info big_lot.000
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, fields
from pathlib import Path

from fabsight.errors import FabsightError, FormatError


@dataclass(frozen=True)
class Limits:
    """The largest sizes a reader accepts; see the module docstring for why these values."""

    #: Dies along one side of a wafer's die grid (rows or columns, off-wafer positions included).
    max_grid_side: int = 5000
    #: Cells of one die grid, rows × columns: 4 M is a 300 mm wafer of 0.13 mm dies.
    max_grid_dies: int = 4_000_000
    #: Defects of one KLARF wafer (the largest real fixture has 22,190).
    max_defects: int = 1_000_000
    #: Pixels (width × height) of one die image: 8192 × 8192.
    max_image_pixels: int = 8192 * 8192
    #: Bytes of the arrays of one ``.npy`` / ``.npz`` after decompression (1 GiB).
    max_array_bytes: int = 1 << 30


#: Field of :class:`Limits` → the environment variable that overrides it.
ENV_VARS: dict[str, str] = {f.name: "FABSIGHT_" + f.name.upper() for f in fields(Limits)}


def current() -> Limits:
    """The defaults, overridden by any ``FABSIGHT_MAX_*`` variable set now."""
    values: dict[str, int] = {}
    for name, var in ENV_VARS.items():
        text = os.environ.get(var)
        if text is None or not text.strip():
            continue
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            value = 0
        if value <= 0:
            raise FabsightError(None, f"{var}={text!r} is not a positive whole number")
        values[name] = value
    return Limits(**values)


def check_grid(path: str | Path, rows: int, cols: int, what: str = "the die grid") -> None:
    """Refuse a die grid of ``rows`` × ``cols`` beyond the grid limits (Python ints: no overflow)."""
    lim = current()
    if max(rows, cols) > lim.max_grid_side:
        raise FormatError(
            path,
            f"{what} would be {rows} × {cols} dies, over the limit of {lim.max_grid_side} per side "
            f"({ENV_VARS['max_grid_side']})",
        )
    if rows * cols > lim.max_grid_dies:
        raise FormatError(
            path,
            f"{what} would be {rows} × {cols} = {rows * cols} dies, over the limit of {lim.max_grid_dies} "
            f"({ENV_VARS['max_grid_dies']})",
        )


def check_span(path: str | Path, x_lo: int, x_hi: int, y_lo: int, y_hi: int, what: str = "the die indices") -> None:
    """Refuse die indices whose bounding box is a grid beyond the limits."""
    check_grid(path, int(y_hi) - int(y_lo) + 1, int(x_hi) - int(x_lo) + 1, f"{what} span a grid that")


def check_defects(path: str | Path, n: int) -> None:
    """Refuse a wafer declaring or holding more defects than the limit."""
    limit = current().max_defects
    if n > limit:
        raise FormatError(path, f"{n} defects on one wafer, over the limit of {limit} ({ENV_VARS['max_defects']})")


def check_pixels(path: str | Path, width: int, height: int) -> None:
    """Refuse an image whose header declares more pixels than the limit (before decoding it)."""
    limit = current().max_image_pixels
    if width * height > limit:
        raise FormatError(
            path,
            f"image of {width} × {height} pixels, over the limit of {limit} ({ENV_VARS['max_image_pixels']})",
        )


def check_array_bytes(path: str | Path, nbytes: int, what: str) -> None:
    """Refuse array data (declared by a header or a zip directory) beyond the byte limit."""
    limit = current().max_array_bytes
    if nbytes > limit:
        raise FormatError(
            path, f"{what} would take {nbytes} bytes, over the limit of {limit} ({ENV_VARS['max_array_bytes']})"
        )


#: The image formats die-image readers accept (what ``fabsight.die.data.IMAGE_SUFFIXES`` names);
#: no other Pillow plugin gets to parse a file.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")


def check_image_header(path: str | Path, data: bytes) -> None:
    """Refuse an image whose header declares more pixels than the limit, before any decoding.

    Pillow reads only the header here, from memory (from a file it would reserve whatever
    length a damaged field claims), and only as one of :data:`IMAGE_FORMATS`; a file it
    cannot identify has no size to check and is refused too.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            width, height = im.size
    except Image.DecompressionBombError as exc:  # Pillow's own guard: far over any limit here
        raise FormatError(path, f"image over the pixel limit ({str(exc)[:120]})") from None
    except UnidentifiedImageError:
        raise FormatError(path, f"cannot be decoded: not a readable image (not {', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FormatError(path, f"cannot be decoded: not a readable image ({str(exc)[:100]})") from None
    check_pixels(path, width, height)
