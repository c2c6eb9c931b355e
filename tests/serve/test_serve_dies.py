"""Die images through the service: anomaly score, label, boxes and heat-map, stored all or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fabsight.serve import create_app
from fabsight.serve.state import Policy
from servekit import AUTH, TOKEN, files_in


def texture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A periodic pattern with noise, like repeated die structure (as in the anomaly tests)."""
    yy, xx = np.mgrid[0:size, 0:size]
    py, px = rng.uniform(0, 0.5, 2)
    img = 128 + 35 * np.sin(2 * np.pi * xx / 8 + px) * np.sin(2 * np.pi * yy / 8 + py) + rng.normal(0, 4, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def anomaly_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fabsight.anomaly import PatchCore, save_model

    rng = np.random.default_rng(7)
    model = PatchCore(input_size=96, max_bank=200, coreset_ratio=0.5, device="cpu")
    model.fit([texture(rng) for _ in range(10)]).calibrate_good([texture(rng) for _ in range(8)], false_alarm_rate=0.01)
    root = tmp_path_factory.mktemp("anomaly-models")
    save_model(model, root / "patchcore")
    return root


@pytest.fixture
def dies(tmp_path: Path, anomaly_models: Path) -> Iterator[TestClient]:
    app = create_app(tmp_path / "s.sqlite", anomaly_models, files_dir=tmp_path / "files", policy=Policy(token=TOKEN))
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as c:
        yield c


def test_die_images_are_scored_boxed_and_stored(dies: TestClient, tmp_path: Path) -> None:
    assert dies.get("/api/health").json()["anomaly_model"] == "patchcore"
    rng = np.random.default_rng(99)
    good = texture(rng)
    bad = texture(rng)
    cv2.circle(bad, (60, 40), 6, 20, -1)  # a dark particle centred at x=60, y=40

    r_good = dies.post("/api/die-images", files={"file": ("good.png", png(good), "image/png")})
    r_bad = dies.post("/api/die-images", files={"file": ("bad.png", png(bad), "image/png")})
    assert r_good.status_code == r_bad.status_code == 201, (r_good.text, r_bad.text)
    (g,), (b,) = r_good.json()["results"], r_bad.json()["results"]
    assert g["label"] == "good" and g["boxes"] == []
    assert b["label"] == "anomalous" and b["score"] > g["score"]
    assert any(x0 <= 60 <= x1 and y0 <= 40 <= y1 for x0, y0, x1, y1, *_ in b["boxes"]), b["boxes"]
    heat = Image.open(BytesIO(dies.get(f"/api/die-results/{b['id']}/heatmap.png").content))
    assert heat.size == (96, 96)
    assert dies.get(f"/api/die-results/{b['id']}/image").content == png(bad)
    again = dies.post("/api/die-images", files={"file": ("bad.png", png(bad), "image/png")})
    assert again.status_code == 200 and again.json()["duplicate"] and again.json()["results"][0]["id"] == b["id"]
    page = dies.get("/die-images").text
    assert page.count('class="heatmap"') == 2 and "bad.png" in page


def test_bad_die_images_store_nothing(dies: TestClient, tmp_path: Path) -> None:
    r = dies.post("/api/die-images", files={"file": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 422 and "x.png" in r.json()["detail"]
    r = dies.post("/api/die-images", files={"file": ("x.png", png(np.zeros((96, 96), np.uint8)), "image/png")},
                  data={"wafer": "999"})
    assert r.status_code == 404
    assert dies.post("/api/die-images", files={"file": ("x.mp4", b"x", "video/mp4")}).status_code == 415
    assert dies.get("/api/health").json()["counts"] == {"uploads": 0, "lots": 0, "wafers": 0, "reviews": 0,
                                                         "die_results": 0}
    assert files_in(tmp_path / "files") == []


def test_die_images_need_an_anomaly_model(client: TestClient) -> None:
    r = client.post("/api/die-images", files={"file": ("a.png", png(np.zeros((8, 8), np.uint8)), "image/png")})
    assert r.status_code == 400 and "no anomaly model loaded" in r.json()["detail"]
    assert "fabsight anomaly fit" in r.json()["detail"]  # the command that makes one
