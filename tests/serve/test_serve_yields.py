"""The per-lot yield analytics of the REST API on generated lots with known answers: Paretos equal to
the library's, planted kill ratios and repeaters recovered through uploaded KLARF / STDF files, a
planted tool found from an uploaded history, and each missing input refused with its reason."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fabsight.analytics.pareto import pareto
from fabsight.io import write_klarf, write_stdf
from fabsight.serve import create_app
from fabsight.serve.state import Policy
from fabsight.synth.defects import generate_defect_lot
from fabsight.synth.impact import paired_lot
from servekit import AUTH, TOKEN


@pytest.fixture(scope="module")
def paired():
    return paired_lot(np.random.default_rng(3), n_wafers=10, shape=(30, 30), sort_flip_y=False)


@pytest.fixture(scope="module")
def repeater_lot():
    return generate_defect_lot(n_wafers=4, lot_id="REP1", seed=2)


def _upload(client: TestClient, path: Path) -> None:
    r = client.post("/api/uploads", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, wafer_models_dir: Path, paired,
           repeater_lot) -> Iterator[TestClient]:
    """One service for the module, holding lot SIM01 (KLARF, then STDF) and lot REP1 (KLARF only)."""
    tmp = tmp_path_factory.mktemp("yields")
    app = create_app(tmp / "store.sqlite", wafer_models_dir, files_dir=tmp / "files", policy=Policy(token=TOKEN))
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as c:
        _upload(c, write_klarf(paired.inspection, tmp / "sim.000"))
        _upload(c, write_stdf(paired.sort, tmp / "sim.stdf"))
        _upload(c, write_klarf(repeater_lot.maps, tmp / "rep.000"))
        yield c


def _history(rows: list[dict[str, str]], header: list[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, header)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def test_paretos_stack_and_kill_ratios_of_an_inspected_and_sorted_lot(client: TestClient, paired) -> None:
    by_class = client.get("/api/lots/SIM01/pareto", params={"by": "class"}).json()
    expected = pareto(paired.inspection, "class")
    assert by_class["total"] == expected.total and by_class["unit"] == "defects"
    assert [(r["label"], r["count"]) for r in by_class["rows"]] == [(r.label, r.count) for r in expected.rows]
    bins = client.get("/api/lots/SIM01/pareto", params={"by": "bin"}).json()
    assert bins["unit"] == "failing dies" and bins["total"] == sum(int(m.n_fail) for m in paired.sort)
    assert {r["label"] for r in bins["rows"]} == {"bin 5 LEAKAGE", "bin 7 FUNCTIONAL"}
    rough = client.get("/api/lots/SIM01/pareto", params={"by": "bin", "source": "inspection"})  # KLARF rough bins
    assert rough.status_code == 400 and rough.json()["detail"].endswith("no ROUGHBINNUMBER column in the defect list "
                                                                        "to rank by")
    assert client.get("/api/lots/SIM01/pareto", params={"by": "colour"}).status_code == 400
    assert client.get("/api/lots/REP1/pareto", params={"by": "softbin"}).status_code == 409  # no sort results
    for url in ("/api/lots/SIM01/pareto.png?by=size", "/api/lots/SIM01/stack.png"):
        picture = client.get(url)
        assert picture.headers["content-type"] == "image/png"
        assert Image.open(BytesIO(picture.content)).size[0] > 300

    k = client.get("/api/lots/SIM01/killratio").json()
    assert k["alignment"]["options"] == "--offset 0,0" and len(k["wafers"]) == 10 and not k["warnings"]
    rows = {int(r["key"]): r for r in k["by_class"]}
    for cls in (1, 2, 3):
        assert abs(rows[cls]["kill_ratio"] - paired.kill_ratio(cls)) < 0.05, rows[cls]

    answer = client.post("/api/ask", json={"question": "Which defect class kills the most dies?", "lot": "SIM01"})
    assert answer.json()["answered"] and answer.json()["answer"].startswith("Defect class 1 CLASS1 kills the most")
    assert client.get("/api/lots/NOPE/killratio").status_code == 404


def test_planted_repeaters_are_flagged_per_defect(client: TestClient, repeater_lot) -> None:
    lot = repeater_lot
    r = client.get("/api/lots/REP1/repeaters").json()
    planted = sum(int(p.sum()) for p in lot.planted)
    assert r["repeaters"] == sum(len(w["flagged_defects"]) for w in r["wafers"])
    hits = sum(len(set(w["flagged_defects"]) & {int(i) for i in m.defects.defect_id[p]})
               for w, m, p in zip(r["wafers"], lot.maps, lot.planted, strict=True))
    assert hits / planted >= 0.95 and hits / r["repeaters"] >= 0.95
    answer = client.post("/api/ask", json={"question": "Are there repeaters?", "lot": "REP1"}).json()
    assert answer["answered"] and answer["answer"].startswith(f"Yes: {r['repeaters']} of the ")
    refused = client.get("/api/lots/REP1/killratio")  # inspection only
    assert refused.status_code == 409 and refused.json()["detail"].endswith("inspection (KLARF) results only")


def test_history_upload_and_commonality(client: TestClient, paired) -> None:
    yields = {m.wafer_id.split("-")[-1]: float(m.yield_) for m in paired.sort}
    cut = float(np.median(list(yields.values())))
    rows = [{"LOT": "SIM01", "WAFER": w, "step": "ETCH", "tool": "ETCH02" if y < cut else "ETCH01"}
            for w, y in yields.items()]
    assert client.get("/api/lots/SIM01/commonality", params={"yield_below": cut}).status_code == 409
    asked = client.post("/api/ask", json={"question": "Which tool do the edge-ring wafers share?", "lot": "SIM01"})
    assert not asked.json()["answered"] and "history CSV" in asked.json()["answer"]

    bad = client.put("/api/lots/SIM01/history", files={"file": ("hist.csv", _history(rows, list(rows[0])))})
    assert bad.status_code == 400 and bad.json()["detail"].startswith("hist.csv: no column 'lot'")
    assert client.put("/api/lots/NOPE/history", params={"lot_col": "LOT", "wafer_col": "WAFER"},
                      files={"file": ("hist.csv", _history(rows, list(rows[0])))}).status_code == 404
    stored = client.put("/api/lots/SIM01/history", params={"lot_col": "LOT", "wafer_col": "WAFER"},
                        files={"file": ("hist.csv", _history(rows, list(rows[0])))})
    assert stored.status_code == 201 and stored.json()["rows"] == 10
    assert stored.json()["columns"] == {"lot": "LOT", "wafer": "WAFER"}

    c = client.get("/api/lots/SIM01/commonality", params={"yield_below": cut}).json()
    assert c["flagged"] == 5 and c["wafers"] == 10
    top = c["findings"][0]
    assert (top["tool"] if "tool" in top else top["level"]) == "ETCH02" and top["p_value"] < 0.01
    assert "tool ETCH02 at ETCH" in c["answer"]
    assert client.get("/api/lots/SIM01/commonality").status_code == 400  # no flag given
