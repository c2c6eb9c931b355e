"""``fabsight inspect``: golden-template inspection of test/template image pairs.

``fabsight inspect TEST TEMPLATE`` inspects one pair (it is short for
``fabsight inspect pair TEST TEMPLATE``); ``train``, ``eval`` and ``folder`` work on
DeepPCB-style datasets and folders of pairs. An image literally named like a
subcommand can still be inspected through the explicit ``pair`` form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from fabsight.cli.common import JsonOpt, emit, out, warn
from fabsight.errors import FabsightError

ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="Model directory from 'fabsight inspect train'.")]
ListOpt = Annotated[
    Path | None,
    typer.Option("--list", "-l", help="DeepPCB list file (relative to DATA or absolute); default: every pair found."),
]


class _PairByDefault(TyperGroup):
    """A group whose first argument, when it is not a subcommand, starts ``pair``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["pair", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_PairByDefault,
    no_args_is_help=True,
    help="Golden-template inspection: register a test image to its template, find, box, classify and count defects.\n\n"
    "'fabsight inspect TEST TEMPLATE' is short for 'fabsight inspect pair TEST TEMPLATE'.",
)


def _load_model(model_dir: Path | None) -> Any:
    if model_dir is None:
        return None
    from fabsight.inspect.model import load_inspector

    return load_inspector(model_dir)


def _check_out(path: Path, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise FabsightError(path, f"output must end in {' or '.join(suffixes)}")
    if path.exists() and path.is_dir():
        raise FabsightError(path, "is a directory, expected a file name")


@app.command("pair")
def pair_cmd(
    test: Annotated[Path, typer.Argument(help="The inspected image.")],
    template: Annotated[Path, typer.Argument(help="Its defect-free template (same size).")],
    model: ModelOpt = None,
    out_png: Annotated[Path | None, typer.Option("--out", "-o", help="Draw the boxes into this PNG.")] = None,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            "--min-confidence", min=0.0, max=1.0, help="Report detections at or above this (default: the model's)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Inspect one pair: boxes with type and confidence, and the count per type."""
    from fabsight.inspect.dataset import load_pair
    from fabsight.inspect.model import inspect_pair

    if out_png is not None:
        _check_out(out_png, (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
    inspector = _load_model(model)
    t, m = load_pair(test, template)
    result = inspect_pair(t, m, inspector, min_confidence=min_confidence)
    payload = {"test": str(test), "template": str(template), "model": None if model is None else str(model)}
    payload.update(result.to_dict())
    if out_png is not None:
        from fabsight.inspect.render import draw, save_image

        save_image(out_png, draw(t, result.detections))
        payload["image"] = str(out_png)

    def human(r: dict[str, Any]) -> None:
        a = r["alignment"]
        out.print(
            f"{r['test']}: {r['total']} defect(s); aligned by {a['method']} "
            f"(dx {a['dx']:+.2f}, dy {a['dy']:+.2f} px, {a['angle_deg']:+.3f}°)",
            markup=False,
        )
        for d in r["defects"]:
            out.print(f"  {d['type']:<16} {d['confidence']:.2f}  box {d['box']}", markup=False)
        out.print("  counts: " + ", ".join(f"{k} {v}" for k, v in r["counts"].items()), markup=False)

    emit(payload, as_json, human)


@app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Argument(help="DeepPCB-style root folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    list_file: ListOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N pairs (quick runs).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Learn the defect classifier, box sizes and operating threshold from annotated pairs."""
    from fabsight.inspect.dataset import read_annotations
    from fabsight.inspect.model import TemplateInspector

    pairs = _annotated(data, list_file, limit)
    truths = [read_annotations(p.annotations) for p in pairs]
    model = TemplateInspector()
    extracted = model.extract(_images(pairs, "finding candidates"))
    model.fit_candidates(extracted, truths)
    model.save(out_dir, {"data": str(data), "list": None if list_file is None else str(list_file)})
    result = {"model": str(out_dir), "threshold": model.threshold_, "classes": model.classes_, **model.training_}
    emit(result, as_json, lambda r: out.print(json.dumps(r, indent=2), markup=False))


@app.command("eval")
def eval_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory.")],
    data: Annotated[Path, typer.Argument(help="DeepPCB-style root folder.")],
    list_file: ListOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N pairs.")] = None,
    render: Annotated[
        Path | None, typer.Option(help="Write pictures of the pairs with misses or false alarms into this folder.")
    ] = None,
    render_limit: Annotated[int, typer.Option(min=0, help="At most this many pictures.")] = 20,
    save_metrics: Annotated[
        bool, typer.Option("--save-metrics", help="Also record the metrics in the model's card.json.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """DeepPCB protocol: precision, recall, F-score and mAP at IoU > 0.33, and count accuracy."""
    from fabsight.inspect.dataset import read_annotations
    from fabsight.inspect.evaluate import evaluate, match
    from fabsight.inspect.model import load_inspector

    model = load_inspector(model_dir)
    pairs = _annotated(data, list_file, limit)
    truths = [read_annotations(p.annotations) for p in pairs]
    all_dets = []
    rendered = 0
    for p, (t, m), ts in zip(pairs, _images(pairs, "inspecting"), truths, strict=True):
        cands, _ = model.candidates(t, m)
        dets = model.classify(cands, t.shape, min_confidence=0.01)
        all_dets.append([d.scored() for d in dets])
        if render is not None and rendered < render_limit:
            kept = [d for d in dets if d.confidence >= model.threshold_]
            hits = match([d.scored() for d in kept], [(b.as_tuple(), b.type) for b in ts], 0.33)
            if not all(hits) or sum(hits) < len(ts):
                from fabsight.inspect.render import draw, save_image

                save_image(render / (p.name.replace("/", "_") + ".png"), draw(t, kept, ts))
                rendered += 1
    from fabsight.inspect.dataset import DEFECT_TYPES

    report = evaluate(
        all_dets,
        [[(b.as_tuple(), b.type) for b in ts] for ts in truths],
        DEFECT_TYPES,
        operating_threshold=model.threshold_,
    )
    report = {
        "model": str(model_dir),
        "data": str(data),
        "list": None if list_file is None else str(list_file),
        **report,
    }
    if render is not None:
        report["rendered"] = rendered
    if save_metrics:
        from fabsight.artifacts import load_card, save_card

        card = load_card(model_dir)
        card.metrics[f"deeppcb:{list_file or data}"] = {k: v for k, v in report.items() if k != "model"}
        save_card(model_dir, card)

    def human(r: dict[str, Any]) -> None:
        out.print(
            f"{r['images']} pairs: precision {r['precision']:.4f}  recall {r['recall']:.4f}  "
            f"F-score {r['f_score']:.4f}  mAP {r['map']:.4f}  count accuracy {r['count_accuracy']:.4f}",
            markup=False,
        )
        for k, v in r["per_type"].items():
            out.print(
                f"  {k:<16} P {v['precision']:.3f}  R {v['recall']:.3f}  F {v['f_score']:.3f}  AP {v['ap']}",
                markup=False,
            )

    emit(report, as_json, human)


@app.command("folder")
def folder_cmd(
    root: Annotated[Path, typer.Argument(help="Folder of NNN_test.* / NNN_temp.* pairs (searched recursively).")],
    model: ModelOpt = None,
    out_jsonl: Annotated[Path, typer.Option("--out", "-o", help="One JSON line per pair.")] = Path("results.jsonl"),
    list_file: ListOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Inspect every pair of a folder; unreadable or mismatched pairs are reported and skipped."""
    from collections import Counter

    from fabsight.inspect.dataset import load_pair, read_list
    from fabsight.inspect.model import inspect_pair
    from fabsight.utils.atomic import atomic_open, to_jsonable
    from fabsight.utils.progress import track

    _check_out(out_jsonl, (".jsonl", ".json", ".ndjson"))
    inspector = _load_model(model)
    pairs = read_list(root, list_file)
    totals: Counter[str] = Counter()
    errors = []
    ok = 0
    with atomic_open(out_jsonl, "w", encoding="utf-8") as fh:
        for p in track(pairs, "inspecting pairs"):
            try:
                t, m = load_pair(p.test, p.template)
            except FabsightError as exc:
                errors.append({"pair": p.name, "error": str(exc)})
                fh.write(json.dumps({"pair": p.name, "error": str(exc)}) + "\n")
                warn(str(exc))
                continue
            r = inspect_pair(t, m, inspector)
            totals.update(r.counts)
            ok += 1
            row = {"pair": p.name, "test": str(p.test), "template": str(p.template), **r.to_dict()}
            fh.write(json.dumps(row, default=to_jsonable) + "\n")
    summary = {"out": str(out_jsonl), "pairs": len(pairs), "inspected": ok, "errors": errors, "counts": dict(totals)}

    def human(s: dict[str, Any]) -> None:
        out.print(f"{s['inspected']}/{s['pairs']} pairs inspected → {s['out']}", markup=False)
        out.print("  counts: " + ", ".join(f"{k} {v}" for k, v in s["counts"].items()), markup=False)
        for e in s["errors"]:
            out.print(f"  skipped {e['pair']}: {e['error']}", markup=False)

    emit(summary, as_json, human)


def _annotated(data: Path, list_file: Path | None, limit: int | None) -> list[Any]:
    """Pairs that all have an annotation file (training and evaluation need one)."""
    from fabsight.inspect.dataset import read_list

    pairs = read_list(data, list_file)[:limit]
    for p in pairs:
        if p.annotations is None:
            raise FabsightError(p.test, "has no annotation file (needed for training and evaluation)")
    return pairs


def _images(pairs: list[Any], description: str) -> Any:
    from fabsight.inspect.dataset import load_pair
    from fabsight.utils.progress import track

    for p in track(pairs, description):
        yield load_pair(p.test, p.template)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="inspect")
