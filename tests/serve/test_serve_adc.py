"""ADC through the service: a KLARF with real DeepPCB review crops uploaded as a zip → per-defect
classes stored → Pareto / wafer map / queue on the dashboard → decisions → training folders."""

from __future__ import annotations

import io
import shutil
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from adckit import klarf18, row18
from fabsight.adc import classify_klarf, write_classified
from fabsight.serve import create_app
from fabsight.serve.state import Policy
from servekit import AUTH, TOKEN

torch.set_num_threads(1)
LIMIT = 2_000_000


@pytest.fixture(scope="module")
def adc_models(adc_die_model, tmp_path_factory) -> Path:
    """A models folder holding only the die model (no wafer model: wafers are stored unclassified)."""
    root = tmp_path_factory.mktemp("adc-models")
    shutil.copytree(adc_die_model[0].dir, root / "die")
    return root


def _client(tmp_path: Path, models: Path | None) -> TestClient:
    app = create_app(tmp_path / "store.sqlite", models, files_dir=tmp_path / "files", max_upload_bytes=LIMIT,
                     policy=Policy(token=TOKEN))
    return TestClient(app, raise_server_exceptions=False, headers=AUTH)


@pytest.fixture
def client(tmp_path: Path, adc_models: Path) -> Iterator[TestClient]:
    with _client(tmp_path, adc_models) as c:
        yield c


def _lot(adc_die_model, folder: Path) -> tuple[Path, list[Path]]:
    """``folder/lot.klarf`` naming two crops of each class under ``img/``, and one defect without images."""
    _, test = adc_die_model
    crops = [p for c in sorted(test) for p in test[c][:2]]
    (folder / "img").mkdir(parents=True)
    for p in crops:
        shutil.copy(p, folder / "img" / p.name)
    rows = [row18(i + 1, 0, [(f"img/{p.name}", 1)]) for i, p in enumerate(crops)] + [row18(len(crops) + 1, 7, [])]
    return klarf18(folder / "lot.klarf", rows), crops


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()


def _post(client: TestClient, data: bytes, name: str = "lot.zip"):
    return client.post("/api/adc/uploads", files={"file": (name, data, "application/zip")})


def test_upload_classify_review_and_export(client, adc_die_model, tmp_path):
    model, _ = adc_die_model
    src, crops = _lot(adc_die_model, tmp_path / "lot")
    expected = classify_klarf(src, model, progress=False)
    r = _post(client, _zip(tmp_path / "lot"))
    assert r.status_code == 201, r.text
    lot = r.json()
    upload, n = lot["upload"], len(crops) + 1
    assert lot["counts"]["lot"]["defects"] == n and len(lot["wafers"]) == 1
    states = lot["counts"]["lot"]["states"]
    assert states.get("no_image") == 1 and states.get("pending", 0) == sum(x.needs_review for x in expected.rows)

    # the stored classes are the library's, and the classified KLARF is byte for byte what `fabsight adc` writes
    stored = {d["defect_id"]: d for s in ("auto", "pending", "no_image")
              for d in client.get("/api/adc/defects", params={"state": s, "upload": upload}).json()}
    assert {k: d["predicted"] for k, d in stored.items()} == {x.defect_id: x.class_name for x in expected.rows}
    got = client.get(f"/api/adc/uploads/{upload}/classified")
    assert got.content == write_classified(expected, tmp_path / "expected.klarf").read_bytes()

    # the dashboard page: Pareto, one map coloured by class, one card per pending defect
    page = client.get(f"/adc/{upload}")
    assert page.status_code == 200 and page.text.count('id="adc-pareto"') == 1
    assert page.text.count('class="adc-map"') == 1 and page.text.count("data-review=") == states.get("pending", 0)

    # decisions: accept one, correct another to a class the model did not give it; twice is a conflict
    a, b = [stored[x.defect_id] for x in expected.rows if x.reason != "no_image"][:2]  # pending or auto: both open
    other = next(c for c in model.classes if c != b["predicted"])
    assert client.post(f"/api/adc/defects/{a['id']}/accept", json={}).json()["state"] == "accepted"
    done = client.post(f"/api/adc/defects/{b['id']}/correct", json={"label": other, "reviewer": "qa"}).json()
    assert done["state"] == "corrected" and done["label"] == other
    assert client.post(f"/api/adc/defects/{b['id']}/accept", json={}).status_code == 409
    after = client.get(f"/api/adc/uploads/{upload}").json()["counts"]["lot"]["classes"]
    before = lot["counts"]["lot"]["classes"]
    assert after.get(other, 0) == before.get(other, 0) + 1  # the Pareto follows the decision

    # training folders: CLASS/image.png, pixels of the review image
    r = client.get("/api/adc/export.zip", params={"upload": upload})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = sorted(zf.namelist())
        assert names == sorted([f"{a['predicted']}/{upload}_W01_{a['defect_id']}.png",
                                f"{other}/{upload}_W01_{b['defect_id']}.png"])
        png = cv2.imdecode(np.frombuffer(zf.read(f"{other}/{upload}_W01_{b['defect_id']}.png"), np.uint8),
                           cv2.IMREAD_UNCHANGED)
    original = cv2.imread(str(crops[b["defect_id"] - 1]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(png, original)
    shown = client.get(f"/api/adc/defects/{b['id']}/image")
    assert shown.headers["content-type"] == "image/png"
    assert np.array_equal(cv2.imdecode(np.frombuffer(shown.content, np.uint8), cv2.IMREAD_UNCHANGED), original)

    again = _post(client, _zip(tmp_path / "lot"))
    assert again.status_code == 200 and again.json()["duplicate"] and again.json()["upload"] == upload


def _bad_zip(kind: str, good: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(good, "lot.klarf")
        if kind == "traversal":
            zf.writestr("../evil.png", b"x")
        elif kind == "absolute":
            zf.writestr("/tmp/evil.png", b"x")
        elif kind == "symlink":
            info = zipfile.ZipInfo("img/link.png")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        elif kind == "bomb":  # 9 MB of zeros in ~9 kB: over 4 × the 2 MB upload limit once inflated
            zf.writestr("img/zeros.png", bytes(9_000_000))
    return buf.getvalue()


@pytest.mark.parametrize(("kind", "message"), [
    ("traversal", "is not a relative path inside the archive"),
    ("absolute", "is not a relative path inside the archive"),
    ("symlink", "is a symbolic link"),
    ("bomb", "the limit is 8000000"),
])
def test_unsafe_zips_are_refused_and_nothing_is_kept(client, tmp_path, kind, message):
    good = klarf18(tmp_path / "k" / "lot.klarf", [row18(1, 0, [])])
    r = _post(client, _bad_zip(kind, good))
    assert r.status_code == 422 and message in r.json()["detail"] and r.json()["detail"].startswith("lot.zip:")
    assert client.get("/api/adc/defects", params={"state": "no_image"}).json() == []
    assert sorted(p.name for p in (tmp_path / "files").iterdir() if not p.name.startswith("token")) == []
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def test_image_reference_leaving_the_zip_and_no_die_model(client, adc_die_model, tmp_path):
    crop = next(p for ps in adc_die_model[1].values() for p in ps)
    shutil.copy(crop, tmp_path / "outside.png")
    klarf18(tmp_path / "lot" / "lot.klarf", [row18(1, 0, [("../outside.png", 1)])])
    r = _post(client, _zip(tmp_path / "lot"))
    assert r.status_code == 400 and "wafer 'W01' defect 1" in r.json()["detail"]
    assert client.get("/api/adc/defects", params={"state": "pending"}).json() == []
    with _client(tmp_path / "bare", None) as bare:
        r = _post(bare, _zip(tmp_path / "lot"))
        assert r.status_code == 400 and "no die model loaded" in r.json()["detail"]
