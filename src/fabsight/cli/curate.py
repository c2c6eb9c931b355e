"""``fabsight curate``: dataset health checks before training; a manifest, never a deletion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, emit, out


def curate(
    data: Annotated[list[Path], typer.Argument(help="Image folders (ROOT/CLASS/*, ROOT/train|test/CLASS/*, or one "
                                                    "folder per split) or wafer-map files/folders.")],
    manifest: Annotated[Path | None, typer.Option("--manifest", help="Write the JSON manifest here.")] = None,
    clean_out: Annotated[Path | None, typer.Option("--out", help="Write a cleaned copy of the kept files here "
                                                                 "(same layout).")] = None,
    link: Annotated[bool, typer.Option("--link", help="Symlink instead of copying into --out.")] = False,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write an HTML contact sheet here.")] = None,
    kind: Annotated[str, typer.Option("--kind", help="auto, images or maps.")] = "auto",
    backbone: Annotated[str | None, typer.Option("--backbone", help="Backbone for embedding near-duplicates and "
                                                                    "outliers (e.g. efficientnet_lite0).")] = None,
    phash_distance: Annotated[int, typer.Option("--phash-distance", min=0, max=20,
                                                help="Largest pHash Hamming distance (of 64 bits) for a copy.")] = 6,
    cosine: Annotated[float, typer.Option("--cosine", min=0.5, max=1.0,
                                          help="Smallest embedding cosine for a copy.")] = 0.99,
    k: Annotated[float, typer.Option("--k", min=0.5, help="Robust thresholds at median ± k·MAD.")] = 3.0,
    input_size: Annotated[int | None, typer.Option("--input-size", min=16, help="Backbone input size "
                                                                               "(default: the backbone's).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto (embeddings).")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Find unreadable files, duplicates, label conflicts, leakage, blur, blanks, outliers, imbalance."""
    from fabsight.curate import CurateOptions, write_clean_tree, write_contact_sheet, write_manifest
    from fabsight.curate import curate as run

    dev = device
    if backbone is not None and device != "cpu":
        from fabsight.utils.device import resolve_device

        dev = resolve_device(device)
    opts = CurateOptions(phash_distance=phash_distance, cosine=cosine, blur_k=k, entropy_k=k, outlier_k=k)
    result = run(data, kind=kind, options=opts, backbone=backbone, device=dev, input_size=input_size)
    outputs: dict[str, Any] = {}
    if clean_out is not None:
        outputs["clean_tree"] = {"path": str(clean_out), "link": link,
                                 "counts": write_clean_tree(result, clean_out, link=link)}
    if html_out is not None:
        outputs["html"] = str(write_contact_sheet(result, html_out))
    if manifest is not None:
        outputs["manifest"] = str(write_manifest(result, manifest))
    shown = {k2: v for k2, v in result.items() if k2 != "files" or manifest is None}
    shown["outputs"] = outputs

    def human(r: dict[str, Any]) -> None:
        s = r["summary"]
        unit = "maps" if r["kind"] == "maps" else "files"  # one KLARF / LSWMD file holds many maps
        out.print(f"{s['files']} {unit}: {s['kept']} kept, {s['dropped']} dropped", markup=False)
        for check, n in s["flagged"].items():
            out.print(f"  {check}: {n}", markup=False)
        out.print(f"{s['duplicate_groups']} groups of copies, {s['label_conflict_groups']} with label conflicts, "
                  f"{s['leakage_groups']} across splits", markup=False)
        for name, t in r["thresholds"].items():
            if isinstance(t, dict) and t.get("threshold") is not None:
                out.print(f"  threshold {name}: {t['threshold']:.4g} ({t['rule']}, k={t['k']})", markup=False)
        bal = (r.get("balance") or {}).get("after")
        if bal:
            out.print(f"class balance ({r['balance']['split'] or 'all'}): imbalance ratio "
                      f"{bal['imbalance_ratio']:.1f}; effective-number weights {bal['effective_number']}", markup=False)
        if "grid_sizes" in s:
            out.print(f"grid sizes: {s['grid_sizes']}", markup=False)
        for name, path in r["outputs"].items():
            out.print(f"wrote {name}: {path if isinstance(path, str) else path['path']}", markup=False)

    emit(shown, as_json, human)


def register(app: typer.Typer) -> None:
    app.command("curate")(curate)
