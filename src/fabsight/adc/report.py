"""What a person looks at for a classified lot: the Pareto of classes, each wafer map coloured
by class, and review-image thumbnails per class.

The same pictures serve the self-contained HTML report (``fabsight adc ... --report``,
:func:`write_report`) and the service's ADC page, so both show the lot the same way. They
are drawn from the classified KLARF read back (:func:`fabsight.io.klarf.read_klarf`), so
what is charted is exactly what was written; :func:`relabel` lays a reviewer's decisions
over it first.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.adc.classify import NO_IMAGE, AdcResult
from fabsight.adc.images import ImageReader
from fabsight.errors import FabsightError
from fabsight.types import WaferMap
from fabsight.utils.atomic import write_text

#: Review-image thumbnails shown per class: enough to see what the class looks like.
THUMBS_PER_CLASS = 6
THUMB_PX = 96
#: Wafer maps drawn one by one (each with its legend); a bigger lot shows the first ones.
MAX_MAPS = 50


@dataclass
class Thumb:
    """One defect's first review image for a gallery."""

    wafer: str
    defect_id: int
    class_name: str
    confidence: float | None
    needs_review: bool
    path: Path
    page: int


def relabel(maps: Sequence[WaferMap], labels: Mapping[tuple[str, int], str], numbers: Mapping[str, int]) -> None:
    """Set the class of the defects in ``labels`` ((wafer id, defect id) → class name) in place;
    a name ``numbers`` lacks takes the next free number, and every map's lookup names it."""
    numbers = dict(numbers)
    for name in sorted(set(labels.values()) - set(numbers)):
        numbers[name] = max([0, *numbers.values()]) + 1
    for m in maps:
        if m.defects is None:
            continue
        names = dict(m.extras.get("class_names") or {})
        for i, did in enumerate(m.defects.defect_id):
            name = labels.get((str(m.wafer_id), int(did)))
            if name is not None:
                m.defects.class_number[i] = numbers[name]
                names[numbers[name]] = name
        m.extras["class_names"] = names


def _figure_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def lot_pictures(maps: Sequence[WaferMap]) -> dict[str, Any]:
    """The Pareto of defect classes (rows and chart) and each wafer's map coloured by class, as ``data:`` URIs."""
    from fabsight.analytics.pareto import pareto, pareto_png
    from fabsight.report.render import render_figure

    ranked = pareto(maps, "class")
    chart = None
    if ranked.rows:
        with tempfile.TemporaryDirectory() as tmp:
            png = pareto_png(ranked, Path(tmp) / "pareto.png")
            chart = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    pictures = [{"wafer": str(m.wafer_id), "png": _figure_uri(render_figure(m, color_by="class"))}
                for m in maps[:MAX_MAPS]]
    return {"pareto": ranked.to_json(), "pareto_png": chart, "maps": pictures,
            "maps_left_out": len(maps) - len(pictures)}


def thumbnail(path: Path, page: int, reader: ImageReader | None = None, size: int = THUMB_PX) -> str:
    """A ``data:`` URI of one review image (a TIFF page), or "" when it cannot be read any more."""
    from fabsight.report.thumbs import png_uri

    try:
        image = (reader or ImageReader()).read(path, page)
    except (FabsightError, ValueError):
        return ""
    return png_uri(np.ascontiguousarray(image), size)


def gallery(thumbs: Iterable[Thumb], per_class: int = THUMBS_PER_CLASS) -> list[dict[str, Any]]:
    """Classes (most defects first), each with its count, how many went to review, and the
    first ``per_class`` thumbnails (those sent to review are marked in the page)."""
    groups: dict[str, list[Thumb]] = {}
    for t in thumbs:
        groups.setdefault(t.class_name, []).append(t)
    reader = ImageReader()
    out = []
    for name, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = [{"wafer": t.wafer, "defect_id": t.defect_id, "confidence": t.confidence,
                  "needs_review": t.needs_review, "png": thumbnail(t.path, t.page, reader)}
                 for t in items[:per_class]]
        out.append({"class": name, "count": len(items), "review": sum(t.needs_review for t in items),
                    "thumbs": shown})
    return out


def result_thumbs(result: AdcResult) -> list[Thumb]:
    """A thumbnail entry per classified defect of ``result`` (its first image), by the model's class."""
    return [Thumb(r.wafer, r.defect_id, str(r.class_name), r.confidence, r.needs_review, Path(r.images[0]), r.pages[0])
            for r in result.rows if r.reason != NO_IMAGE and r.images]


def write_report(result: AdcResult, classified: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """One self-contained HTML file (every picture inline) for the lot ``result`` classified and
    ``classified`` (the KLARF :func:`~fabsight.adc.write_classified` wrote), written atomically."""
    from jinja2 import Environment, PackageLoader

    from fabsight.io.klarf import read_klarf

    maps = read_klarf(classified)
    summary = result.to_dict()
    summary.pop("defects")
    html = Environment(loader=PackageLoader("fabsight.report", "templates"), autoescape=True).get_template(
        "adc_report.html").render(s=summary, lot=maps[0].lot_name if maps else "", classified=Path(classified).name,
                                  gallery=gallery(result_thumbs(result)), **lot_pictures(maps))
    write_text(out, html)
    return Path(out)
