"""``fabsight synth``: write a labelled synthetic WM-811K / MixedWM38-like data set."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, emit, out
from fabsight.errors import FabsightError


def parse_size(text: str) -> tuple[int, int]:
    """``52`` → (52, 52); ``25x27`` → (25, 27) (rows × columns)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", text)
    if not m:
        raise FabsightError("--size", f"{text!r} is not a grid size like 52 or 25x27")
    from fabsight.synth.geometry import check_shape

    rows = int(m.group(1))
    try:
        return check_shape((rows, int(m.group(2) or rows)))
    except FabsightError as exc:
        raise FabsightError("--size", exc.message) from None


def parse_noise(text: str) -> tuple[float, float]:
    """``0.01`` or ``0.002,0.03`` → a (low, high) background fail-rate range."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 <= v <= 1 for v in values) or values[0] > values[-1]:
        raise FabsightError("--noise", f"{text!r} is not a fail rate or LOW,HIGH range within 0..1")
    return values[0], values[-1]


def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write: OUT/CLASS/*.npy|png.")],
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Maps per class.")] = 100,
    size: Annotated[
        list[str] | None,
        typer.Option("--size", help="Grid size, e.g. 52 or 25x27; repeat to mix sizes (default: the profile's)."),
    ] = None,
    mixed: Annotated[
        bool, typer.Option("--mixed", help="The 38 MixedWM38 classes instead of the 9 WM-811K ones.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same maps.")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="File format of each map: npy or png (values 0/1/2).")] = "npy",
    noise: Annotated[
        str | None,
        typer.Option("--noise", help="Background fail rate or LOW,HIGH range (default: the profile's, 0.002,0.03)."),
    ] = None,
    profile: Annotated[
        str,
        typer.Option(
            "--profile",
            help="default (clean maps, 52x52) or wm811k (ranges, background and grids fitted to real WM-811K maps).",
        ),
    ] = "default",
    npz: Annotated[
        Path | None, typer.Option("--npz", help="Also write a MixedWM38-style .npz (arr_0 maps, arr_1 labels).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --out if it exists (the whole folder is swapped).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate labelled synthetic wafer maps with every WM-811K pattern (or MixedWM38 mix)."""
    from fabsight.io import write_folder, write_mixedwm38
    from fabsight.synth import PROFILES, generate_dataset

    if fmt not in ("npy", "png"):
        raise FabsightError("--format", f"{fmt!r} is not npy or png")
    if out_dir.exists() and not (out_dir.is_dir() and overwrite):
        what = "is a file" if not out_dir.is_dir() else "already exists; pass --overwrite to replace the whole folder"
        raise FabsightError(out_dir, what)
    if profile not in PROFILES:
        raise FabsightError("--profile", f"{profile!r} is not one of {', '.join(PROFILES)}")
    shapes = [parse_size(s) for s in size] if size else list(PROFILES[profile].shapes)
    if npz is not None and len(set(shapes)) > 1:
        raise FabsightError(npz, "a MixedWM38 .npz holds one grid size: give a single --size")
    start = time.perf_counter()
    maps = generate_dataset(
        per_class,
        shapes=shapes,
        mixed=mixed,
        seed=seed,
        noise=None if noise is None else parse_noise(noise),
        profile=profile,
    )
    generated = time.perf_counter() - start
    write_folder(maps, out_dir, image_format=fmt)
    if npz is not None:
        write_mixedwm38(maps, npz)
    counts = Counter("+".join(m.labels) for m in maps)
    result: dict[str, Any] = {
        "out": str(out_dir),
        "npz": None if npz is None else str(npz),
        "maps": len(maps),
        "classes": dict(counts),
        "shapes": [list(s) for s in dict.fromkeys(shapes)],
        "format": fmt,
        "seed": seed,
        "profile": profile,
        "generate_seconds": round(generated, 3),
        "total_seconds": round(time.perf_counter() - start, 3),
    }

    def human(r: dict[str, Any]) -> None:
        out.print(
            f"wrote {r['maps']} maps of {len(r['classes'])} classes to {r['out']}"
            + (f" and {r['npz']}" if r["npz"] else "")
            + f" in {r['total_seconds']:.1f} s",
            markup=False,
            highlight=False,
        )

    emit(result, as_json, human)


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
