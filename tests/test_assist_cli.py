"""``fabsight explain / ask / compare / render --clusters`` end to end: real fixtures, a tiny model, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from clikit import invoke as run
from fabsight.assist.clustering import cluster_defects, cluster_dies
from fabsight.io import read_maps, write_folder
from fabsight.synth import generate_dataset
from fabsight.wafer import WaferClassifier
from test_assist_vlm import _Handler

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny Center / Edge-Ring / none classifier (seconds to train; accuracy is not the point here)."""
    train = generate_dataset(40, classes=("Center", "Edge-Ring", "none"), shapes=((36, 36),), seed=0)
    return WaferClassifier(input_size=32, epochs=4, batch_size=32, n_threads=1).fit(train).save(
        tmp_path_factory.mktemp("assist-model") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A labelled test folder, a golden lot, an Edge-Loc wafer and a wafer of another grid size."""
    root = tmp_path_factory.mktemp("assist-cli")
    write_folder(generate_dataset(4, classes=("Center", "Edge-Ring"), shapes=((36, 36),), seed=5), root / "test")
    write_folder(generate_dataset(8, classes=("none",), shapes=((36, 36),), seed=6), root / "golden")
    write_folder(generate_dataset(1, classes=("Edge-Loc",), shapes=((36, 36),), seed=7), root / "edgeloc")
    write_folder(generate_dataset(1, classes=("none",), shapes=((30, 30),), seed=8), root / "small")
    return {k: root / k for k in ("test", "golden", "edgeloc", "small")}


def test_explain_real_fixtures_json(shared) -> None:
    f = shared / "fixtures"
    code, out, err = run("explain", f / "klarf" / "QUU_NUU.000", f / "stdf" / "lot2.stdf", "--model", "none",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["model"] is None
    records = json.loads(out)["results"]
    maps = read_maps(f / "klarf" / "QUU_NUU.000") + read_maps(f / "stdf" / "lot2.stdf")
    assert [r["wafer_id"] for r in records] == [m.wafer_id for m in maps]
    for r, m in zip(records, maps, strict=True):
        assert r["facts"]["extent"]["failing"] == m.n_fail and r["facts"]["extent"]["dies"] == m.n_dies
        assert r["explanation"].startswith("No classifier was given")
        assert all(s["facts"] for s in r["sentences"])
        defects = r["facts"]["defect_clustering"]
        if m.format == "klarf":  # KLARF defects are clustered in µm and reported
            assert defects["points"] == len(m.defects) and f"The file's {len(m.defects)} defects" in r["explanation"]
        else:
            assert defects is None


def test_explain_with_a_model_names_patterns_where_they_are(data, model) -> None:
    code, out, err = run("explain", data["test"], "--model", model, "--json")
    assert code == 0, err
    records = json.loads(out)["results"]
    truth = [m.labels[0] for m in read_maps(data["test"])]
    named = 0
    for r, label in zip(records, truth, strict=True):
        pattern = r["facts"]["pattern"]
        if pattern["status"] == "pattern":
            named += 1
            assert pattern["labels"] == [label]
            assert r["facts"]["location"]["location"] == {"Center": "centre", "Edge-Ring": "edge"}[label]
            assert r["root_causes"][label]
        else:
            assert r["explanation"].startswith("No dominant pattern")
    assert named >= 6


def test_ask_over_a_lot_and_refusal(shared) -> None:
    quu = shared / "fixtures" / "klarf" / "QUU_NUU.000"
    code, out, _ = run("ask", quu, "How many wafers does the file hold?", "--json")
    r = json.loads(out)
    assert code == 0 and r["answered"] and r["data"]["count"] == 3 and r["data"]["wafers"] == ["02", "06", "01"]
    code, out, _ = run("ask", quu, "Which wafer has the lowest yield?")
    assert code == 0 and out.startswith("Wafer 01 has the lowest yield, 98.8%")
    code, out, _ = run("ask", quu, "Who was on shift when this lot ran?", "--json")
    assert code == 0 and not json.loads(out)["answered"]


def test_compare_finds_the_new_edge_pattern(data) -> None:
    code, out, err = run("compare", data["edgeloc"], "--golden", data["golden"], "--json")
    assert code == 0, err
    (r,) = json.loads(out)["results"]
    assert r["differs"] and r["reference"]["wafers"] == 8
    fine = [x for x in r["regions"] if not x["region"].endswith("zone")]
    assert min(fine, key=lambda x: x["p_value"])["region"].startswith("edge")
    assert r["significant_regions"] and "centre" not in r["significant_regions"]
    assert r["difference"]["location"]["location"] == "edge"
    one = sorted(data["golden"].rglob("*.npy"))[0]
    code, out, err = run("compare", one, "--golden", one, "--json")
    (same,) = json.loads(out)["results"]
    assert code == 0 and not same["differs"] and same["new_fails"] == 0 and same["reference"]["wafers"] == 1


def test_vlm_answer_beside_the_grounded_one_and_fallback(data) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.requests, srv.behaviour = [], "ok"  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        code, out, err = run("explain", data["edgeloc"], "--vlm", url, "--vlm-model", "cosmos-reason1", "--json")
        (r,) = json.loads(out)["results"]
        assert code == 0 and r["vlm"]["answer"] == "Edge ring; check EBR." and r["explanation"]
        srv.behaviour = "slow"  # type: ignore[attr-defined]
        code, out, err = run("ask", data["edgeloc"], "How many dies fail?", "--vlm", url, "--vlm-model",
                             "cosmos-reason1", "--vlm-timeout", "0.3", "--json")
        r = json.loads(out)
        assert code == 0 and r["answered"] and "no reply within 0.3 s" in r["vlm"]["error"]
        assert "showing the offline answer only" in err
    finally:
        srv.shutdown()
        srv.server_close()


def test_render_clusters(shared, tmp_path) -> None:
    png = tmp_path / "c.png"
    klarf, stdf = shared / "fixtures" / "klarf" / "QUU_NUU.000", shared / "fixtures" / "stdf" / "lot2.stdf"
    code, out, _ = run("render", klarf, stdf, "--clusters", "--out", png, "--json")
    assert code == 0 and png.read_bytes().startswith(b"\x89PNG")
    # KLARF: clusters of defects (µm), drawn on their dies; STDF (no defects): clusters of failing dies
    expected = [len(cluster_defects(m.defects, die_pitch=m.die_pitch).clusters) for m in read_maps(klarf)]
    expected += [len(cluster_dies(m).clusters) for m in read_maps(stdf)]
    assert json.loads(out)["clusters"] == expected and min(expected[:3]) >= 1


def test_user_mistakes_are_one_line_errors(data, tmp_path) -> None:
    bad_kb = tmp_path / "kb.yaml"
    bad_kb.write_text("patterns:\n  Blob:\n    description: x\n")
    assert run("explain", data["edgeloc"], "--kb", bad_kb)[2].endswith("unknown pattern 'Blob'; expected one of "
                                                                        "Center, Donut, Edge-Loc, Edge-Ring, Loc, "
                                                                        "Near-full, Random, Scratch, none")
    assert run("explain", data["edgeloc"], "--vlm", "http://x")[2] == ("error: --vlm: needs --vlm-model NAME "
                                                                      "(the model served at that endpoint)")
    assert "die grid but the golden reference is 36x36" in run("compare", data["small"], "--golden",
                                                               data["golden"])[2]
    proc = subprocess.run([sys.executable, "-m", "fabsight", "ask", str(data["edgeloc"]), " "],
                          capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO / "src"),
                                                                         "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stderr == "error: the question is empty\n"


def test_export_sft_cli(data, tmp_path) -> None:
    code, out, err = run("export-sft", data["test"], "--golden", data["golden"], "--out", tmp_path / "sft",
                         "--size", "64", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["maps"] == 8 and r["by_kind"] == dict.fromkeys(["multi", "yes", "no", "describe", "golden"], 8)
    assert len(json.loads((tmp_path / "sft" / "annotations.json").read_text())) == 40


def test_compare_classifies_the_difference_map_with_a_model(data, model) -> None:
    code, out, err = run("compare", data["edgeloc"], "--golden", data["golden"], "--model", model, "--json")
    assert code == 0, err
    (r,) = json.loads(out)["results"]
    pattern = r["difference"]["pattern"]
    assert pattern["status"] != "unclassified" and pattern["top3"]
    assert (pattern["status"] == "pattern") == ("the classifier reads it as" in r["summary"])
