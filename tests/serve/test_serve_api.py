"""REST API: upload every format, refuse bad uploads whole, filter, review, ask, drift, concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fabsight.demo import example_files
from fabsight.io import read_maps, write_folder, write_g85, write_klarf, write_mixedwm38, write_stdf
from fabsight.synth import generate_dataset
from fabsight.types import WaferMap
from servekit import CLASSES, files_in


def synthetic_lot(lot: str, classes: tuple[str, ...], per_class: int, seed: int, day: int = 1) -> list[WaferMap]:
    """Maps of ``classes`` with lot/wafer ids and a timestamp, truth kept in ``labels``."""
    maps = generate_dataset(per_class, classes=classes, shapes=((40, 40),), seed=seed)
    for i, m in enumerate(maps, start=1):
        m.lot_id, m.wafer_id = lot, f"{i:02d}"
        m.timestamp = datetime(2026, 11, day, 8, i)
    return maps


def post(client: TestClient, path: Path, content_type: str = "application/octet-stream", **form: str):
    return client.post("/api/uploads", files={"file": (path.name, path.read_bytes(), content_type)}, data=form)


def counts(client: TestClient) -> dict[str, int]:
    return client.get("/api/health").json()["counts"]


def test_health_reports_model_and_empty_store(client: TestClient) -> None:
    h = client.get("/api/health").json()
    assert set(h["classes"]) == set(CLASSES)
    assert h["wafer_model"].startswith("wafer")
    assert h["counts"] == {"uploads": 0, "lots": 0, "wafers": 0, "reviews": 0, "die_results": 0}
    assert "/api/uploads" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("name", [p.name for p in example_files()])
def test_upload_packaged_examples(client: TestClient, name: str) -> None:
    path = next(p for p in example_files() if p.name == name)
    expected = read_maps(path)
    r = post(client, path)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == expected[0].format and body["status"] == "classified" and not body["duplicate"]
    assert [(w["lot"], w["wafer_id"]) for w in body["wafers"]] == [(m.lot_id, m.wafer_id) for m in expected]
    assert [w["failing"] for w in body["wafers"]] == [m.n_fail for m in expected]
    detail = client.get(f"/api/wafers/{body['wafers'][0]['id']}").json()
    assert detail["prediction"]["label"] in CLASSES
    assert detail["explanation"]["text"] and detail["explanation"]["facts"]["extent"]["failing"] == expected[0].n_fail
    assert detail["review_item"]["state"] in ("pending", "auto")


WRITERS = {
    "klarf": (write_klarf, "lot.klarf"),
    "stdf": (write_stdf, "lot.stdf"),
    "g85": (write_g85, "lot.xml"),
    "mixedwm38": (write_mixedwm38, "lot.npz"),
}  # LSWMD pickles are refused unless --allow-pickle (test_serve_security)


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_upload_each_format_classifies_known_patterns(client: TestClient, tmp_path: Path, fmt: str) -> None:
    maps = synthetic_lot("L7", ("Center", "Edge-Ring"), 3, seed=3)
    writer, name = WRITERS[fmt]
    path = writer(maps, tmp_path / name)
    r = post(client, path)
    assert r.status_code == 201, r.text
    wafers = r.json()["wafers"]
    assert r.json()["format"] == fmt and len(wafers) == 6
    assert [w["failing"] for w in wafers] == [m.n_fail for m in maps]
    right = sum(w["label"] == m.labels[0] for w, m in zip(wafers, maps, strict=True))
    assert right >= 5, [w["label"] for w in wafers]  # a tiny model, but these two patterns are easy


@pytest.mark.parametrize("image_format", ["npy", "png"])
def test_upload_single_map_files(client: TestClient, tmp_path: Path, image_format: str) -> None:
    maps = synthetic_lot("L8", ("Center",), 1, seed=4)
    root = write_folder(maps, tmp_path / "maps", image_format=image_format)
    path = next(root.rglob(f"*.{image_format}"))
    ctype = "image/png" if image_format == "png" else "application/x-npy"
    r = post(client, path, ctype, lot="manual-lot")
    assert r.status_code == 201, r.text
    (w,) = r.json()["wafers"]
    assert w["lot"] == "manual-lot" and w["failing"] == maps[0].n_fail


def _bad_uploads(tmp_path: Path) -> list[tuple[str, bytes, str, int, str]]:
    klarf = example_files()[0].read_bytes()
    stdf = next(p for p in example_files() if p.suffix == ".stdf").read_bytes()
    return [
        ("garbage.klarf", b"this is not wafer data\n", "text/plain", 422, "unrecognised wafer data"),
        ("empty.klarf", b"", "application/octet-stream", 400, "empty file"),
        ("cut.stdf", stdf[: len(stdf) // 3], "application/octet-stream", 422, "cut.stdf"),
        ("lot.png", klarf, "image/png", 422, "not the declared kind"),
        ("lot.mp4", klarf, "video/mp4", 415, "content type 'video/mp4'"),
        ("half.klarf", klarf[: len(klarf) // 2], "text/plain", 422, "half.klarf"),
    ]


def test_bad_uploads_are_refused_with_reason_and_store_nothing(client: TestClient, tmp_path: Path) -> None:
    files_dir = tmp_path / "files"
    for name, data, ctype, code, reason in _bad_uploads(tmp_path):
        r = client.post("/api/uploads", files={"file": (name, data, ctype)})
        assert r.status_code == code, (name, r.text)
        assert reason in r.json()["detail"], (name, r.json())
    assert counts(client) == {"uploads": 0, "lots": 0, "wafers": 0, "reviews": 0, "die_results": 0}
    assert files_in(files_dir) == []


@pytest.mark.parametrize("size", [2_030_000, 3_000_000])  # caught while reading / from Content-Length
def test_upload_size_limit(client: TestClient, size: int) -> None:
    big = b"FileVersion 1 2;\n" + b"x" * size
    r = client.post("/api/uploads", files={"file": ("big.klarf", big, "text/plain")})
    assert r.status_code == 413 and "larger than 2000000 bytes" in r.json()["detail"]
    assert ("Content-Length" in r.json()["detail"]) == (size > 2_100_000)
    assert counts(client)["uploads"] == 0


def test_duplicate_upload_returns_the_first(client: TestClient) -> None:
    path = example_files()[0]
    first = post(client, path).json()
    again = post(client, path, lot="ignored")
    assert again.status_code == 200 and again.json()["duplicate"] and again.json()["id"] == first["id"]
    assert counts(client)["wafers"] == len(first["wafers"])
    assert client.get(f"/api/uploads/{first['id']}").json()["sha256"] == first["sha256"]


def test_filters(client: TestClient, tmp_path: Path) -> None:
    a = write_klarf(synthetic_lot("LA", ("Center", "Scratch"), 2, seed=5, day=1), tmp_path / "a.klarf")
    b = write_klarf(synthetic_lot("LB", ("Edge-Ring",), 3, seed=6, day=5), tmp_path / "b.klarf")
    up_a, up_b = post(client, a).json(), post(client, b).json()
    all_wafers = client.get("/api/wafers").json()
    assert len(all_wafers) == 7
    assert {w["lot"] for w in client.get("/api/wafers", params={"lot": "LB"}).json()} == {"LB"}
    assert len(client.get("/api/wafers", params={"upload": up_a["id"]}).json()) == 4
    late = client.get("/api/wafers", params={"since": "2026-11-03T00:00:00"}).json()
    assert {w["lot"] for w in late} == {"LB"}
    early = client.get("/api/wafers", params={"until": "2026-11-03T00:00:00Z"}).json()
    assert {w["lot"] for w in early} == {"LA"}
    by_label: dict[str, int] = {}
    for w in all_wafers:
        by_label[w["label"]] = by_label.get(w["label"], 0) + 1
    for label, n in by_label.items():
        got = client.get("/api/wafers", params={"pattern": label.lower()}).json()
        assert len(got) == n and {w["label"] for w in got} == {label}
    pending = client.get("/api/wafers", params={"review": "pending"}).json()
    assert all(w["review"] == "pending" for w in pending)
    assert len(pending) + len(client.get("/api/wafers", params={"review": "auto"}).json()) == 7
    r = client.get("/api/wafers", params={"review": "maybe"})
    assert r.status_code == 400 and "review state must be one of" in r.json()["detail"]
    assert client.get("/api/wafers", params={"limit": 2}).json() == all_wafers[:2]
    lots = {lot["name"]: lot for lot in client.get("/api/lots").json()}
    assert lots["LB"]["wafers"] == 3 and sum(lots["LA"]["patterns"].values()) == 4
    assert [lot["name"] for lot in client.get("/api/lots").json()] == ["LA", "LB"]  # oldest first
    assert len(client.get("/api/lots/LA").json()["wafer_list"]) == 4
    assert client.get("/api/lots/nope").status_code == 404
    assert client.get("/api/wafers/9999").status_code == 404
    assert up_b["wafers"][0]["lot"] == "LB"


def test_review_accept_and_correct(client: TestClient, tmp_path: Path) -> None:
    post(client, write_klarf(synthetic_lot("LR", ("Center", "Edge-Ring"), 2, seed=8), tmp_path / "r.klarf"))
    items = client.get("/api/reviews", params={"state": "pending"}).json()
    items += client.get("/api/reviews", params={"state": "auto"}).json()
    assert len(items) == 4
    first, second = items[0], items[1]
    ok = client.post(f"/api/reviews/{first['id']}/accept", json={"reviewer": "ana"}).json()
    assert ok["state"] == "accepted" and ok["label"] == first["predicted"] and ok["reviewer"] == "ana"
    other = next(c for c in CLASSES if c != second["predicted"])
    fixed = client.post(f"/api/reviews/{second['id']}/correct", json={"label": other}).json()
    assert fixed["state"] == "corrected" and fixed["label"] == other
    # the wafer's current label follows the person, and the pattern filter with it
    assert client.get(f"/api/wafers/{second['wafer']}").json()["label"] == other
    assert second["wafer"] in [w["id"] for w in client.get("/api/wafers", params={"pattern": other}).json()]
    again = client.post(f"/api/reviews/{first['id']}/accept")
    assert again.status_code == 409 and "already decided" in again.json()["detail"]
    bad = client.post(f"/api/reviews/{items[2]['id']}/correct", json={"label": "../etc"})
    assert bad.status_code == 400 and "not a usable class name" in bad.json()["detail"]
    assert client.post("/api/reviews/999/accept").status_code == 404
    assert len(client.get("/api/reviews", params={"state": "accepted"}).json()) == 1


def test_concurrent_reviewers_cannot_both_decide(client: TestClient, tmp_path: Path) -> None:
    post(client, write_klarf(synthetic_lot("LC", ("Center",), 1, seed=9), tmp_path / "c.klarf"))
    (wafer,) = client.get("/api/wafers").json()
    review_id = client.get(f"/api/wafers/{wafer['id']}").json()["review_item"]["id"]
    labels = ["Center", "Scratch", "Edge-Ring", "none"] * 2
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda lab: client.post(f"/api/reviews/{review_id}/correct", json={"label": lab})
                              .status_code, labels))
    assert sorted(codes) == [200] + [409] * 7


def test_ask_about_a_wafer_and_a_lot(client: TestClient, tmp_path: Path) -> None:
    maps = synthetic_lot("LQ", ("Center", "Edge-Ring"), 2, seed=10)
    wafers = post(client, write_klarf(maps, tmp_path / "q.klarf")).json()["wafers"]
    r = client.post("/api/ask", json={"question": "What is the yield of this wafer?", "wafer": wafers[0]["id"]})
    answer = r.json()
    assert r.status_code == 200 and answer["answered"] and answer["intent"] == "yield" and answer["wafers"] == 1
    assert f"{100 * maps[0].yield_:.1f}%" in answer["answer"]
    lot = client.post("/api/ask", json={"question": "Which wafer has the lowest yield?", "lot": "LQ"}).json()
    worst = min(maps, key=lambda m: m.yield_)
    assert lot["answered"] and lot["wafers"] == 4 and f"wafer {worst.wafer_id}" in lot["answer"].lower()
    off = client.post("/api/ask", json={"question": "Who was the operator on night shift?", "lot": "LQ"}).json()
    assert not off["answered"] and "cannot be answered" in off["answer"]
    both = client.post("/api/ask", json={"question": "yield?", "lot": "LQ", "wafer": 1})
    assert both.status_code == 400 and "exactly one" in both.json()["detail"]
    assert client.post("/api/ask", json={"question": "yield?", "lot": "nope"}).status_code == 400


def test_drift_between_selections(client: TestClient, tmp_path: Path) -> None:
    post(client, write_klarf(synthetic_lot("D1", ("none",), 8, seed=11, day=1), tmp_path / "d1.klarf"))
    post(client, write_klarf(synthetic_lot("D2", ("none",), 8, seed=12, day=2), tmp_path / "d2.klarf"))
    post(client, write_klarf(synthetic_lot("D3", ("Edge-Ring",), 8, seed=13, day=3), tmp_path / "d3.klarf"))
    shifted = client.post("/api/drift", json={"a": {"lot": "D1"}, "b": {"lot": "D3"}, "n_permutations": 200}).json()
    assert shifted["drift"] and shifted["p_value"] < 0.05 and shifted["n_a"] == 8 and shifted["n_b"] == 8
    same = client.post("/api/drift", json={"a": {"lot": "D1"}, "b": {"lot": "D2"}, "n_permutations": 200}).json()
    assert same["distance"] < shifted["distance"]
    by_time = client.post(
        "/api/drift", json={"a": {"until": "2026-11-02T23:59:00"}, "b": {"lots": ["D3"]}, "n_permutations": 100}
    ).json()
    assert by_time["n_a"] == 16
    few = client.post("/api/drift", json={"a": {"lot": "D1"}, "b": {"lot": "nope"}})
    assert few.status_code == 400 and "at least 2 wafers" in few.json()["detail"]
    assert client.post("/api/drift", json={"a": {}, "b": {}, "n_permutations": 1}).status_code == 422


def test_concurrent_uploads(client: TestClient, tmp_path: Path) -> None:
    paths = [
        write_klarf(synthetic_lot(f"P{i}", ("Center", "none"), 1, seed=20 + i), tmp_path / f"p{i}.klarf")
        for i in range(6)
    ]
    paths += [paths[0]] * 3  # the same bytes four times at once: stored once
    barrier = threading.Barrier(len(paths))

    def send(path: Path) -> tuple[int, int]:
        barrier.wait()
        r = post(client, path)
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(pool.map(send, paths))
    assert sorted(code for code, _ in results) == [200] * 3 + [201] * 6
    assert len({uid for _, uid in results}) == 6
    assert counts(client) == {"uploads": 6, "lots": 6, "wafers": 12, "reviews": 12, "die_results": 0}
    assert len(files_in(tmp_path / "files")) == 6


def test_crash_mid_upload_leaves_nothing(client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fabsight.store.ingest as ingest

    real = ingest.add_wafer
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "add_wafer", flaky)
    path = write_klarf(synthetic_lot("K1", ("Center", "Scratch"), 2, seed=30), tmp_path / "k.klarf")
    assert post(client, path).status_code == 500
    assert counts(client) == {"uploads": 0, "lots": 0, "wafers": 0, "reviews": 0, "die_results": 0}
    assert files_in(tmp_path / "files") == []

    monkeypatch.setattr(ingest, "add_wafer", real)

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ingest, "write_bytes", disk_full)
    assert post(client, path).status_code == 500
    assert counts(client)["wafers"] == 0 and files_in(tmp_path / "files") == []
    monkeypatch.undo()
    assert post(client, path).status_code == 201  # the same file goes in once the fault is gone
    assert counts(client)["wafers"] == 4


def test_pictures_and_die_results(client: TestClient, tmp_path: Path) -> None:
    from io import BytesIO

    from PIL import Image

    up = post(client, write_klarf(synthetic_lot("PX", ("Center",), 2, seed=31), tmp_path / "x.klarf")).json()
    wid = up["wafers"][0]["id"]
    png = client.get(f"/api/wafers/{wid}/map.png", params={"size": 64})
    assert png.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(BytesIO(png.content)))
    assert image.shape == (64, 64, 3) and (image == [200, 30, 45]).all(axis=2).any()  # failing dies drawn red
    assert Image.open(BytesIO(client.get(f"/api/wafers/{wid}/clusters.png").content)).format == "PNG"
    assert Image.open(BytesIO(client.get("/api/lots/trend.png").content)).format == "PNG"
    assert client.get(f"/api/wafers/{wid}/map.png", params={"size": 5}).status_code == 422
    boxes = [[3, 4, 20, 30, "short", 0.9]]
    ids = client.post(f"/api/uploads/{up['id']}/die-results",
                      json=[{"image": "die_3_4.png", "label": "short", "score": 0.9, "boxes": boxes, "wafer": wid}])
    assert ids.status_code == 201
    (die,) = client.get(f"/api/wafers/{wid}").json()["die_results"]
    assert die["label"] == "short" and die["boxes"] == boxes
    bad = client.post(f"/api/uploads/{up['id']}/die-results", json=[{"image": "a.png", "wafer": 999}])
    assert bad.status_code == 404 and counts(client)["die_results"] == 1


def test_a_lot_uploaded_as_inspection_and_sort_lists_its_physical_wafers(client: TestClient) -> None:
    """The KLARF, STDF and G85 of lot A103: one lot of 8 wafers with a yield per source, not 12 averaged."""
    for p in example_files():
        if "A103" in p.name:
            assert post(client, p).status_code == 201
    (lot,) = client.get("/api/lots").json()
    assert (lot["name"], lot["wafers"], lot["results"]) == ("A103", 8, 12) and "mean_yield" not in lot
    assert [(s["source"], s["wafers"], s["results"]) for s in lot["sources"]] == [("inspection M1-ETCH", 8, 8),
                                                                                  ("sort", 3, 4)]
    detail = client.get("/api/lots/A103").json()
    assert len(detail["wafer_list"]) == 12
    physical = {w["wafer_id"]: w["results"] for w in detail["physical_wafers"]}
    assert list(physical) == [f"{i:02d}" for i in range(1, 9)]
    assert [(r["measured_by"], r["format"]) for r in physical["01"]] == [
        ("inspection M1-ETCH", "klarf"), ("sort", "stdf"), ("sort", "g85")]
    sort_yields = [next(r for r in reversed(physical[w]) if r["measured_by"] == "sort")["yield"]
                   for w in ("01", "02", "03")]
    assert lot["sources"][1]["mean_yield"] == pytest.approx(np.mean(sort_yields))
    page = client.get("/lots/A103")
    assert page.status_code == 200 and page.text.count("<tr><td>") == 2 + 8  # 2 sources, 8 wafers
    assert "<th>inspection M1-ETCH</th><th>sort</th>" in page.text
    assert client.get("/").text.count('href="/lots/A103"') == 1
    # questions over the lot see 8 wafers with their sources, and the KLARF's defects kept at upload
    listed = client.post("/api/ask", json={"question": "List the wafer ids", "lot": "A103"}).json()
    assert listed["answered"] and listed["data"]["count"] == 8 and listed["wafers"] == 12
    assert listed["data"]["wafers"] == [f"{i:02d}" for i in range(1, 9)]
    from fabsight.io import read_maps

    klarf = read_maps(next(p for p in example_files() if p.name == "LOT-A103.klarf"))
    defects = client.post("/api/ask", json={"question": "How many defects are on wafer 3?", "lot": "A103"}).json()
    assert defects["intent"] == "defect_count" and defects["data"]["defects"] == len(klarf[2].defects)
