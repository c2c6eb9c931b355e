"""What curation writes: the manifest, a cleaned copy / symlink tree, an HTML contact sheet.

Every output is built aside and swapped in (``fabsight.utils.atomic``); the input data is
only ever read. The cleaned tree keeps the input layout (``[SPLIT/]CLASS/file``), which is
what every ``train`` command reads.
"""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path
from typing import Any

from fabsight.errors import FabsightError
from fabsight.report.thumbs import png_uri
from fabsight.utils.atomic import atomic_dir, write_json, write_text
from fabsight.utils.progress import track

THUMB = 96


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    write_json(path, manifest)
    return Path(path)


def write_clean_tree(manifest: dict[str, Any], out: str | os.PathLike[str], *, link: bool = False) -> dict[str, int]:
    """Copy (or symlink, ``link=True``) every kept file to ``out/<rel>``; returns counts per top folder."""
    target = Path(out).resolve()
    for d in manifest["data"]:
        root = Path(d).resolve()
        if target == root or root in target.parents or target in root.parents:
            raise FabsightError(out, f"the cleaned tree would be written inside (or over) the input {d}; "
                                     "choose another --out")
    counts: dict[str, int] = {}
    kept = [r for r in manifest["files"] if r["keep"]]
    if any("rel" not in r for r in kept):
        raise FabsightError(out, "a cleaned tree needs one file per map or image; for multi-map files "
                                 "(KLARF, STDF, pickles) use the manifest's keep list with 'fabsight convert'")
    with atomic_dir(target) as tmp:
        for row in track(kept, "writing cleaned tree"):
            dst = tmp / row["rel"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = Path(row["path"]).resolve()
            if link:
                os.symlink(src, dst)
            else:
                shutil.copy2(src, dst)
            top = Path(row["rel"]).parts[0] if len(Path(row["rel"]).parts) > 1 else "."
            counts[top] = counts.get(top, 0) + 1
    return counts


def _thumb(row: dict[str, Any], kind: str) -> str:
    """Thumbnail of a manifest row; an unreadable file gets none (its flag says why)."""
    if any(f["check"] in ("unreadable", "impossible_values") for f in row["flags"]):
        return ""
    try:
        if kind == "maps":
            from fabsight.curate.maps import load_grid
            from fabsight.report.render import map_to_rgb

            grid = load_grid(row)
            return png_uri(map_to_rgb(grid, THUMB), THUMB) if grid is not None and grid.size else ""
        from fabsight.die.data import read_image

        return png_uri(read_image(row["path"]), THUMB)
    except (FabsightError, ValueError, OSError):
        return ""


def _figure(row: dict[str, Any], kind: str, keep_mark: str = "") -> str:
    uri = _thumb(row, kind)
    img = f'<img src="{uri}" alt="">' if uri else '<div class="noimg">no picture</div>'
    cls = "keep" if row["keep"] else "drop"
    checks = ", ".join(sorted({f["check"] for f in row["flags"]})) or "ok"
    name = html.escape(row.get("rel") or row["path"])
    return (f'<figure class="{cls}" title="{html.escape(row["path"])}">{img}<figcaption>{keep_mark}{name}<br>'
            f"<b>{html.escape(checks)}</b></figcaption></figure>")


def write_contact_sheet(manifest: dict[str, Any], path: str | os.PathLike[str], *, max_items: int = 500) -> Path:
    """Self-contained HTML: each duplicate group side by side, then each flagged file with its reasons."""
    kind = manifest["kind"]
    by_path = {r["path"]: r for r in manifest["files"]}
    parts = [f"<h1>fabsight curate — {manifest['summary']['files']} files, {manifest['summary']['kept']} kept</h1>",
             f"<p>{html.escape(manifest['keep_rule'])}</p>",
             "<h2>Thresholds</h2><pre>" + html.escape(_pretty(manifest["thresholds"])) + "</pre>"]
    groups = manifest["groups"][:max_items]
    parts.append(f"<h2>Groups of copies ({len(manifest['groups'])})</h2>")
    for gi, g in enumerate(groups):
        tags = [g["kind"]] + (["LABEL CONFLICT"] if g.get("label_conflict") else []) + (
            ["LEAKAGE"] if g.get("leakage") else [])
        cells = "".join(_figure(by_path[m], kind, "★ " if m == g["keep"] and by_path[m]["keep"] else "")
                        for m in g["members"])
        parts.append(f"<section><h3>group {gi}: {html.escape(' · '.join(tags))}</h3><div class=row>{cells}</div>"
                     "</section>")
    in_groups = {m for g in manifest["groups"] for m in g["members"]}
    flagged = [r for r in manifest["files"] if r["flags"] and r["path"] not in in_groups][:max_items]
    parts.append(f"<h2>Other flagged files ({len(flagged)})</h2><div class=row>")
    for row in track(flagged, "drawing contact sheet"):
        detail = "; ".join(f["detail"] for f in row["flags"])
        parts.append(_figure(row, kind).replace("</figcaption>", f"<br>{html.escape(detail)}</figcaption>"))
    parts.append("</div>")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>fabsight curate</title>
<style>body{{font-family:sans-serif;margin:1em}} .row{{display:flex;flex-wrap:wrap;gap:6px}}
figure{{margin:0;font-size:10px;width:140px;word-break:break-all;padding:3px}}
figure.drop{{background:#fde2e2}} figure.keep{{background:#e2f5e2}}
img{{image-rendering:pixelated;border:1px solid #ccc;max-width:{THUMB}px}} .noimg{{width:{THUMB}px;height:40px;
border:1px dashed #c00}}</style></head><body>
{''.join(parts)}
<p>★ = the copy kept. Green: kept, red: dropped.</p></body></html>
"""
    write_text(path, doc)
    return Path(path)


def _pretty(obj: Any) -> str:
    import json

    from fabsight.utils.atomic import to_jsonable

    return json.dumps(obj, indent=1, default=to_jsonable)
