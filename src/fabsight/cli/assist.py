"""``fabsight explain``, ``ask``, ``compare`` and ``export-sft``: grounded explanations, Q&A,
golden-reference comparison and VLM fine-tuning data for wafer maps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, out, require_read, wafer_model, warn
from fabsight.cli.deploy import RuntimeOpt
from fabsight.cli.yieldimpact import ColOpt
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    from fabsight.io import ReadLog

ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", help="Wafer classifier directory (fabsight wafer train, or 'pretrained': the shipped "
                                 "WM-811K model); names the pattern."),
]
#: ``--model none``: measured facts only, no pattern named.
NO_MODEL = "none"
DefaultModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Wafer classifier directory (fabsight wafer train) that names the pattern; default: the shipped "
        "WM-811K model ('pretrained'); 'none': measured facts only.",
    ),
]
KbOpt = Annotated[Path | None, typer.Option("--kb", help="Root-cause knowledge base YAML replacing the shipped one.")]
_VLM_PANEL = "Vision-language model"
VlmOpt = Annotated[
    str | None,
    typer.Option(
        "--vlm",
        help="OpenAI-compatible endpoint, e.g. http://host:8000/v1 (asked beside the offline answer).",
        rich_help_panel=_VLM_PANEL,
    ),
]
VlmModelOpt = Annotated[
    str | None, typer.Option("--vlm-model", help="Model name at that endpoint.", rich_help_panel=_VLM_PANEL)
]
VlmTimeoutOpt = Annotated[
    float, typer.Option("--vlm-timeout", min=0.1, help="Seconds to wait for the VLM.", rich_help_panel=_VLM_PANEL)
]


def _load_maps(inputs: list[str], log: ReadLog, what: str = "wafer maps") -> list[Any]:
    """All maps of the inputs (unreadable files go to ``log``); wafers without an id are
    numbered from 1 so answers can name them."""
    from fabsight.io import iter_maps
    from fabsight.utils.progress import track

    maps = list(track(iter_maps(inputs, log), f"reading {what}"))
    require_read(bool(maps), log, inputs[0], f"no {what} found")
    for i, m in enumerate(maps):
        if not str(m.wafer_id):
            m.wafer_id = str(i + 1)
    return maps


def _default_model(model: Path | None) -> tuple[Path | None, str | None]:
    """explain / ask: the model to load and its name in the output (``--model``, else the shipped
    one; neither for ``--model none``)."""
    if model is not None and str(model) == NO_MODEL:
        return None, None
    return wafer_model(model)


def _predict(model: Path | None, maps: list[Any], runtime: str) -> list[dict[str, Any]] | None:
    if model is None:
        return None
    from fabsight.artifacts import load
    from fabsight.wafer.pretrained import resolve_model

    return load(resolve_model(model), runtime, task="wafer-pattern").predict_details(maps)


def _vlm(url: str | None, name: str | None, timeout: float) -> Any:
    from fabsight.assist.vlm import VLMConfig

    if url is None:
        if name is not None:
            raise FabsightError("--vlm-model", "given without --vlm URL")
        return None
    if not url.startswith(("http://", "https://")):
        raise FabsightError("--vlm", f"{url!r} is not an http(s) URL")
    if not name:
        raise FabsightError("--vlm", "needs --vlm-model NAME (the model served at that endpoint)")
    return VLMConfig(url, name, timeout)


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def explain_cmd(
    inputs: Annotated[list[str], typer.Argument(help="Wafer data: KLARF, STDF, G85, LSWMD, npz, folders, globs.")],
    model: DefaultModelOpt = None,
    runtime: RuntimeOpt = "torch",
    kb: KbOpt = None,
    vlm: VlmOpt = None,
    vlm_model: VlmModelOpt = None,
    vlm_timeout: VlmTimeoutOpt = 60.0,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Explain each wafer from measured facts: pattern, location, extent, yield, severity, root causes."""
    from fabsight.assist.explain import explain_maps
    from fabsight.assist.knowledge import load_kb
    from fabsight.assist.vlm import ask_or_fallback, png_bytes
    from fabsight.io import ReadLog

    config = _vlm(vlm, vlm_model, vlm_timeout)
    knowledge = load_kb(kb)
    model_dir, name = _default_model(model)
    log = ReadLog(strict=strict)
    maps = _load_maps(inputs, log)
    explanations = explain_maps(maps, knowledge, _predict(model_dir, maps, runtime))
    if config is not None:
        question = "Explain this wafer map: the defect pattern, where it is, how large, and likely root causes."
        for m, e in zip(maps, explanations, strict=True):
            e.vlm = ask_or_fallback(config, png_bytes(m), question, e.facts.to_dict(), warn)

    def human(result: dict[str, Any]) -> None:
        for r in result["results"]:
            _say(f"wafer {r['wafer_id']}" + (f" (lot {r['lot_id']})" if r["lot_id"] else ""))
            _say(f"  {r['explanation']}")
            for label, causes in r["root_causes"].items():
                for c in causes:
                    _say(f"  - {label}: {c['cause']}. Check: {', '.join(c['process_steps'])}. Why: {c['reasoning']}")
            if r.get("vlm", {}).get("answer"):
                _say(f"  VLM ({r['vlm']['model']}): {r['vlm']['answer']}")

    emit({"model": name, "results": [e.to_dict() for e in explanations]}, as_json, human, log)


def ask_cmd(
    input: Annotated[str, typer.Argument(help="One wafer or a lot: any readable file, folder or glob.")],
    question: Annotated[str, typer.Argument(help="The question, e.g. \"which wafers show edge-ring?\".")],
    model: DefaultModelOpt = None,
    runtime: RuntimeOpt = "torch",
    kb: KbOpt = None,
    vlm: VlmOpt = None,
    vlm_model: VlmModelOpt = None,
    vlm_timeout: VlmTimeoutOpt = 60.0,
    history: Annotated[Path | None, typer.Option("--history", help="Wafer history CSV (columns lot, wafer, step, "
                                                 "tool, chamber, slot, time) for 'which tool do the edge-ring "
                                                 "wafers share?'.")] = None,
    lot_col: ColOpt = None,
    wafer_col: ColOpt = None,
    step_col: ColOpt = None,
    tool_col: ColOpt = None,
    chamber_col: ColOpt = None,
    slot_col: ColOpt = None,
    time_col: ColOpt = None,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question about a wafer or lot offline, from measured facts (refuses what the data cannot answer)."""
    from fabsight.analytics.commonality import read_history
    from fabsight.analytics.lot import LotAnalytics
    from fabsight.assist.facts import wafer_facts
    from fabsight.assist.knowledge import load_kb
    from fabsight.assist.qa import Lot, ask
    from fabsight.assist.vlm import ask_or_fallback, png_bytes
    from fabsight.io import ReadLog
    from fabsight.utils.progress import track

    if not question.strip():
        raise FabsightError(None, "the question is empty")
    config = _vlm(vlm, vlm_model, vlm_timeout)
    knowledge = load_kb(kb)
    model_dir, name = _default_model(model)
    log = ReadLog(strict=strict)
    maps = _load_maps([input], log)
    preds = _predict(model_dir, maps, runtime) or [None] * len(maps)
    facts = [wafer_facts(m, p) for m, p in track(list(zip(maps, preds, strict=True)), "measuring")]
    named = {"lot": lot_col, "wafer": wafer_col, "step": step_col, "tool": tool_col, "chamber": chamber_col,
             "slot": slot_col, "time": time_col}
    rows = None if history is None else read_history(history, named, [k for k, v in named.items() if v])
    answer = ask(question, Lot(facts, knowledge, LotAnalytics(maps, rows, None if history is None else str(history))))
    if config is not None and answer.answered:
        chosen = [m for m in maps if answer.slots.get("wafer") in (None, m.wafer_id)]
        facts_json = [f.to_dict() for f in facts if answer.slots.get("wafer") in (None, f.wafer_id)]
        answer.vlm = ask_or_fallback(config, png_bytes(chosen[:25]), question, facts_json[:25], warn)

    def human(r: dict[str, Any]) -> None:
        _say(r["answer"])
        if r.get("vlm", {}).get("answer"):
            _say(f"VLM ({r['vlm']['model']}): {r['vlm']['answer']}")

    emit({**answer.to_dict(), "model": name}, as_json, human, log)


def compare_cmd(
    inputs: Annotated[list[str], typer.Argument(help="Wafers to check (any readable format).")],
    golden: Annotated[
        list[str], typer.Option("--golden", help="Golden map, or good wafers / a previous lot for a baseline.")
    ],
    model: ModelOpt = None,
    runtime: RuntimeOpt = "torch",
    vlm: VlmOpt = None,
    vlm_model: VlmModelOpt = None,
    vlm_timeout: VlmTimeoutOpt = 60.0,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare wafers with a golden reference: differing dies and regions, significance, new pattern."""
    from fabsight.assist.compare import build_baseline, compare_map, difference_map
    from fabsight.assist.vlm import ask_or_fallback, png_bytes
    from fabsight.io import ReadLog
    from fabsight.utils.progress import track

    config = _vlm(vlm, vlm_model, vlm_timeout)
    golden_log, log = ReadLog(strict=strict), ReadLog(strict=strict)
    reference = _load_maps(golden, golden_log, "golden maps")
    baseline = build_baseline(reference, source=", ".join(golden))
    maps = _load_maps(inputs, log)
    diffs = [difference_map(m, baseline) for m in maps]
    preds = _predict(model, diffs, runtime) or [None] * len(maps)
    results = [compare_map(m, baseline, difference_prediction=p)
               for m, p in track(list(zip(maps, preds, strict=True)), "comparing")]
    if config is not None:
        single = len(reference) == 1
        question = ("The left map is the wafer under test, the right one the golden reference. " if single else
                    f"The map is the wafer under test; the facts compare it with a baseline of {len(reference)} "
                    "wafers. ") + "What differs, and what new defect pattern (if any) appeared?"
        for m, r in zip(maps, results, strict=True):
            pictures = [m, reference[0]] if single else [m]
            r.vlm = ask_or_fallback(config, png_bytes(pictures), question, r.to_dict(), warn)

    def human(rs: dict[str, Any]) -> None:
        for r in rs["results"]:
            _say(r["summary"])
            if r.get("vlm", {}).get("answer"):
                _say(f"  VLM ({r['vlm']['model']}): {r['vlm']['answer']}")

    emit({"results": [r.to_dict() for r in results]}, as_json, human, golden_log + log)


def export_sft_cmd(
    inputs: Annotated[list[str], typer.Argument(help="Labelled wafer maps (folders ROOT/CLASS, LSWMD, npz, …).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write (images/ + annotations.json).")],
    golden: Annotated[
        list[str] | None, typer.Option("--golden", help="Golden map(s): adds golden-comparison conversations.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Label unlabelled maps with this classifier (confident ones only).")
    ] = None,
    runtime: RuntimeOpt = "torch",
    kb: KbOpt = None,
    size: Annotated[int, typer.Option("--size", min=32, max=2048, help="Picture side in pixels.")] = 448,
    seed: Annotated[int, typer.Option(help="Seed for the wrong classes of the 'no' questions.")] = 0,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a VLM fine-tuning set (LLaVA / Cosmos-cookbook conversations) from labelled maps."""
    from fabsight.assist.compare import build_baseline
    from fabsight.assist.knowledge import load_kb
    from fabsight.assist.sft import export_sft
    from fabsight.io import ReadLog

    knowledge = load_kb(kb)
    log = ReadLog(strict=strict)
    maps = _load_maps(inputs, log)
    if model is not None:
        todo = [m for m in maps if not m.labels]
        labelled = 0
        for m, p in zip(todo, _predict(model, todo, runtime) if todo else [], strict=True):
            if not p["needs_review"]:
                m.labels, labelled = tuple(p["label"].split("+")), labelled + 1
        skipped = len(todo) - labelled
        if skipped:
            warn(f"{skipped} unlabelled maps left out: the classifier was not confident about them")
        maps = [m for m in maps if m.labels]
        if not maps:
            raise FabsightError(inputs[0], "no labelled maps left to export")
    reference = None
    if golden:
        golden_log = ReadLog(strict=strict)
        ref_maps = _load_maps(golden, golden_log, "golden maps")
        reference = (ref_maps[0], build_baseline(ref_maps, source=", ".join(golden)))
        log += golden_log
    result = export_sft(maps, out_dir, knowledge, golden=reference, seed=seed, size=size)

    def human(r: dict[str, Any]) -> None:
        kinds = ", ".join(f"{v} {k}" for k, v in r["by_kind"].items())
        _say(f"wrote {r['conversations']} conversations about {r['maps']} maps ({kinds}) to {r['out']}")

    emit(result, as_json, human, log)


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)
    app.command("ask")(ask_cmd)
    app.command("compare")(compare_cmd)
    app.command("export-sft")(export_sft_cmd)
