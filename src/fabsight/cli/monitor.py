"""``fabsight drift`` and ``fabsight monitor``: lot-to-lot drift tests and control charts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, out, require_read
from fabsight.cli.deploy import RuntimeOpt
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    from fabsight.io import ReadLog
    from fabsight.monitor.charts import ChartKind
    from fabsight.types import WaferMap

ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Wafer classifier directory for pattern probabilities, pattern mix and embedding "
        "(default: the shipped WM-811K model).",
    ),
]
NoModelOpt = Annotated[
    bool, typer.Option("--no-model", help="Geometric features only, no classifier (the test without a model).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of projections and permutations (results reproduce).")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Significance level of the drift test.")]


def read_wafers(paths: list[str], log: ReadLog, lots: str | None = None, what: str = "input") -> list[WaferMap]:
    """Maps of files/folders/globs, optionally only the lots named in a comma-separated list.

    Unreadable files go to ``log``; when nothing was readable this stops (exit 2).
    """
    from fabsight.io import iter_maps
    from fabsight.utils.progress import track

    maps = list(track(iter_maps(paths, log), f"reading {what}"))
    require_read(bool(maps), log, paths[0] if paths else None, f"{what}: no wafer maps found")
    if lots:
        wanted = {s.strip() for s in lots.split(",") if s.strip()}
        found = {m.lot_id for m in maps}
        missing = sorted(wanted - found)
        if missing:
            raise FabsightError(
                paths[0],
                f"no lot {', '.join(missing)} in {what} (lots there: {', '.join(sorted(found)[:10]) or 'none'})",
            )
        maps = [m for m in maps if m.lot_id in wanted]
    return maps


def load_classifier(model: Path | None, runtime: str = "torch") -> Any:
    """The wafer classifier at ``model`` (a directory or 'pretrained') on ``runtime``, or None."""
    if model is None:
        return None
    from fabsight.artifacts import load
    from fabsight.wafer.pretrained import resolve_model

    return load(resolve_model(model), runtime, task="wafer-pattern")


def check_model_options(model: Path | None, no_model: bool) -> None:
    """Refuse ``--model`` with ``--no-model`` before any input is read."""
    if no_model and model is not None:
        raise FabsightError(model, "--model and --no-model contradict each other: give one")


def monitor_model(model: Path | None, no_model: bool, runtime: str) -> tuple[Any, dict[str, Any] | None]:
    """The classifier ``drift``/``monitor`` use (the shipped one unless ``--model`` names another;
    none with ``--no-model``) and how the output names it."""
    if no_model:
        return None, None
    from fabsight.wafer.pretrained import PRETRAINED_NAME, resolve_model

    path = resolve_model(model)
    shipped = model is None or str(model) == PRETRAINED_NAME
    return load_classifier(path, runtime), {"path": str(path), "shipped": shipped}


def _model_line(model: dict[str, Any] | None) -> str:
    if model is None:
        return "model: none (geometric features only)"
    return f"model: {'the shipped WM-811K model' if model['shipped'] else 'given'} ({model['path']})"


def _drift_human(res: dict[str, Any]) -> None:
    from rich.table import Table

    verdict = "[bold red]DRIFT[/]" if res["drift"] else "[green]no drift detected[/]"
    out.print(
        f"{verdict}: p = {res['p_value']:.4g} (α = {res['alpha']}, {res['n_a']} vs {res['n_b']} wafers, "
        f"{res['n_permutations']} permutations, {res['combine']} combination)"
    )
    out.print(_model_line(res["model"]), highlight=False, markup=False)
    t = Table("test", "statistic", "p", title="components (each a permutation test on the same splits)")
    for c in res["components"]:
        t.add_row(c["name"], f"{c['statistic']:.4g}", f"{c['p_value']:.3g}")
    out.print(t)
    t = Table("feature", "mean A", "mean B", "shift (SD)", "W dist", "p", "p Holm", title="features that moved most")
    for s in res["per_feature"][:8]:
        t.add_row(
            s["name"],
            f"{s['mean_a']:.4g}",
            f"{s['mean_b']:.4g}",
            f"{s['smd']:+.2f}",
            f"{s['distance']:.3f}",
            f"{s['p_value']:.3g}",
            f"{s['p_holm']:.3g}",
        )
    out.print(t)
    if res["pattern_changes"]:
        t = Table("pattern", "A", "B", "change", "Fisher p", title="pattern frequencies")
        for c in res["pattern_changes"]:
            t.add_row(
                c["pattern"],
                f"{c['count_a']} ({c['fraction_a']:.1%})",
                f"{c['count_b']} ({c['fraction_b']:.1%})",
                f"{c['change']:+.1%}",
                f"{c['p_value']:.3g}",
            )
        out.print(t)


def drift(
    a: Annotated[str, typer.Argument(help="Set A (e.g. baseline): a file, folder or quoted glob.")],
    b: Annotated[str, typer.Argument(help="Set B (e.g. the new lot): a file, folder or quoted glob.")],
    lots_a: Annotated[str | None, typer.Option("--lots-a", help="Only these lots of A (comma-separated).")] = None,
    lots_b: Annotated[str | None, typer.Option("--lots-b", help="Only these lots of B (comma-separated).")] = None,
    model: ModelOpt = None,
    no_model: NoModelOpt = False,
    runtime: RuntimeOpt = "torch",
    embeddings: Annotated[
        bool, typer.Option("--embeddings/--no-embeddings", help="Compare the model's embeddings (MMD) too.")
    ] = True,
    combine: Annotated[
        str, typer.Option("--combine", help="How component p-values combine: 'fisher' or 'min-p'.")
    ] = "fisher",
    projections: Annotated[int, typer.Option("--projections", help="Random projection directions.")] = 128,
    permutations: Annotated[int, typer.Option("--permutations", help="Permutations for the p-value.")] = 1000,
    alpha: AlphaOpt = 0.05,
    seed: SeedOpt = 0,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Do two sets of wafers differ? Permutation tests of features, pattern mix and embedding, combined."""
    from fabsight.io import ReadLog
    from fabsight.monitor import drift_test, extract_features

    check_model_options(model, no_model)
    log_a, log_b = ReadLog(strict=strict), ReadLog(strict=strict)
    set_a = read_wafers([a], log_a, lots_a, "set A")
    set_b = read_wafers([b], log_b, lots_b, "set B")
    clf, model_info = monitor_model(model, no_model, runtime)
    res = drift_test(
        extract_features(set_a, model=clf, embeddings=embeddings),
        extract_features(set_b, model=clf, embeddings=embeddings),
        n_projections=projections,
        n_permutations=permutations,
        seed=seed,
        alpha=alpha,
        combine=combine,
    )
    emit({**res.to_dict(), "model": model_info}, as_json, _drift_human, log_a + log_b)


def _monitor_human(res: dict[str, Any]) -> None:
    from rich.table import Table

    out.print(_model_line(res["model"]), highlight=False, markup=False)
    t = Table("lot", "time", "wafers", "fail fraction", "drift p", "alarms", title="lots (oldest first)")
    for lot in res["lots"]:
        p = "baseline" if lot["baseline"] else (f"{lot['drift']['p_value']:.4f}" if "drift" in lot else "")
        alarms = "; ".join(f"{a['kind']}: {a['chart']}" for a in lot["alarms"])
        t.add_row(
            lot["lot"],
            str(lot["time"] or ""),
            str(lot["wafers"]),
            f"{lot['fail_fraction']:.4f}",
            p,
            f"[red]{alarms}[/]" if alarms else "",
        )
    out.print(t)
    if "file mtime" in res["time_sources"] or "input order" in res["time_sources"]:
        out.print(f"note: lot times from {', '.join(res['time_sources'])} (files without timestamps)")
    for a in res["alarms"]:
        out.print(f"[red]ALARM[/] {a['lot']}: {a['kind']} on {a['chart']}: {a['detail']}", highlight=False)
    if not res["alarms"]:
        out.print("[green]no alarms[/]")


def monitor(
    history: Annotated[list[str], typer.Argument(help="Wafer files/folders/globs over time (KLARF, STDF, ...).")],
    model: ModelOpt = None,
    no_model: NoModelOpt = False,
    runtime: RuntimeOpt = "torch",
    baseline: Annotated[int, typer.Option("--baseline", help="The first N lots in time set the limits.")] = 5,
    chart: Annotated[str, typer.Option("--chart", help="'laney' (p′, robust to clustered fails) or 'p'.")] = "laney",
    alpha: AlphaOpt = 0.05,
    permutations: Annotated[int, typer.Option("--permutations", help="Permutations per lot drift test.")] = 500,
    seed: SeedOpt = 0,
    report: Annotated[Path | None, typer.Option("--report", help="Write an HTML lot report here.")] = None,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Per-lot yield and pattern mix, control charts, and alarms against baseline lots."""
    from fabsight.io import ReadLog
    from fabsight.monitor import monitor_lots

    if chart not in ("laney", "p"):
        raise FabsightError(None, f"--chart must be 'laney' or 'p', got {chart!r}")
    kind: ChartKind = "laney" if chart == "laney" else "p"
    if report is not None and report.suffix.lower() not in (".html", ".htm"):
        raise FabsightError(report, "the report is an HTML file: give a .html path")
    check_model_options(model, no_model)
    log = ReadLog(strict=strict)
    maps = read_wafers(history, log, what="history")
    clf, model_info = monitor_model(model, no_model, runtime)
    res = monitor_lots(
        maps,
        model=clf,
        n_baseline=baseline,
        chart=kind,
        alpha=alpha,
        n_permutations=permutations,
        seed=seed,
    )
    result = {**res.to_dict(maps), "model": model_info}
    if report is not None:
        from fabsight.monitor.report import write_report

        result["report"] = str(write_report(res, maps, report))
    emit(result, as_json, _monitor_human, log)


def register(app: typer.Typer) -> None:
    app.command("drift", rich_help_panel="Monitoring")(drift)
    app.command("monitor", rich_help_panel="Monitoring")(monitor)
