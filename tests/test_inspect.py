"""Golden-template inspection: registration, detection, evaluation protocol, model and CLI.

Known-answer tests paste synthetic defects into a real DeepPCB template and move/relight
the result by a known transform; the rest train a small model on real pairs once.
"""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.errors import FabsightError, FormatError
from fabsight.inspect import (
    DEFECT_TYPES,
    TemplateInspector,
    align,
    evaluate,
    inspect_pair,
    load_inspector,
    read_annotations,
    read_list,
)
from fabsight.inspect.evaluate import Scored, average_precision, iou

DEEPPCB = "data/deeppcb"
TEMPLATE = "group12000/12000/12000001_temp.jpg"


# --------------------------------------------------------------------------- helpers
def _ridge_point(mask: np.ndarray, lo: float, hi: float, avoid: list[tuple[int, int]]) -> tuple[int, int, float]:
    """A pixel on the medial axis of ``mask`` whose half-width lies in [lo, hi], away from the border."""
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    ridge = (dist == cv2.dilate(dist, np.ones((3, 3), np.uint8))) & (dist >= lo) & (dist <= hi)
    ridge[:80] = ridge[-80:] = False
    ridge[:, :80] = ridge[:, -80:] = False
    for y, x in avoid:
        ridge[max(0, y - 80) : y + 80, max(0, x - 80) : x + 80] = False
    ys, xs = np.nonzero(ridge)
    assert len(ys), "the template has no suitable place for a synthetic defect"
    i = len(ys) // 2
    return int(ys[i]), int(xs[i]), float(dist[ys[i], xs[i]])


def _synthesize(template: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """The template with an open (a line cut) and a short (two features bridged); their boxes."""
    copper = (template < 128).astype(np.uint8)
    test = template.copy()
    boxes = {}
    y, x, r = _ridge_point(copper, 3, 9, [])
    cut = int(r) + 3
    cv2.circle(test, (x, y), cut, 255, -1)
    boxes["open"] = (x, y)
    y2, x2, r2 = _ridge_point(1 - copper, 4, 10, [(y, x)])
    cv2.circle(test, (x2, y2), int(r2) + 3, 0, -1)
    boxes["short"] = (x2, y2)
    changed = ((test < 128) != (template < 128)).astype(np.uint8)
    out = {}
    for kind, (cx, cy) in boxes.items():
        win = np.zeros_like(changed)
        win[cy - 20 : cy + 21, cx - 20 : cx + 21] = changed[cy - 20 : cy + 21, cx - 20 : cx + 21]
        ys, xs = np.nonzero(win)
        out[kind] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return test, out


def _move(img: np.ndarray, angle: float, dx: float, dy: float, gain: float, offset: float) -> np.ndarray:
    h, w = img.shape
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    M[:, 2] += (dx, dy)
    moved = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(moved.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8), M


def _move_box(box: tuple[int, int, int, int], M: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    pts = cv2.transform(np.array([[[x1, y1], [x2, y1], [x1, y2], [x2, y2]]], np.float32), M)[0]
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


@pytest.fixture(scope="module")
def template(shared) -> np.ndarray:
    return cv2.imread(str(shared / DEEPPCB / TEMPLATE), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def synthetic(template):
    """A synthetic test image: two known defects, rotated 0.6°, shifted (4.5, -3.25) px, relit."""
    defective, boxes = _synthesize(template)
    test, M = _move(defective, 0.6, 4.5, -3.25, 0.8, 35.0)
    return test, M, {k: _move_box(b, M) for k, b in boxes.items()}


# --------------------------------------------------------------------------- registration
def test_alignment_recovers_known_transform(template, synthetic) -> None:
    test, M, _ = synthetic
    al = align(test, template)
    assert al.method == "ecc"
    # al.matrix maps test → template, i.e. it is the inverse of the applied warp.
    expected = cv2.invertAffineTransform(M)
    corners = np.array([[[0, 0], [639, 0], [0, 639], [639, 639]]], np.float32)
    err = np.abs(cv2.transform(corners, al.matrix) - cv2.transform(corners, expected)).max()
    assert err < 0.5, f"corner error {err:.2f} px"
    assert al.angle_deg == pytest.approx(0.6, abs=0.05)


def test_alignment_falls_back_on_featureless_images() -> None:
    flat = np.full((64, 64), 200, np.uint8)
    al = align(flat, flat)
    assert al.method in ("identity", "phase")
    assert np.allclose(al.matrix, np.eye(2, 3), atol=1e-6)


# --------------------------------------------------------------------------- detection
def test_untrained_detector_finds_pasted_defects(template, synthetic) -> None:
    test, _, boxes = synthetic
    result = inspect_pair(test, template)
    found = [d.box for d in result.detections]
    for kind, box in boxes.items():
        best = max((iou(box, f) for f in found), default=0.0)
        assert best > 0.33, f"{kind} at {box} not found (best IoU {best:.2f}) among {found}"
    # Misregistration and relighting must not produce a flood of false alarms.
    assert len(result.detections) <= 4
    assert result.counts == {"defect": len(result.detections)}
    polarity = {d.polarity for d in result.detections if max(iou(d.box, b) for b in boxes.values()) > 0.33}
    assert polarity == {"added", "removed"}


def test_identical_pair_has_no_defects(template) -> None:
    result = inspect_pair(template, template)
    assert result.detections == []
    assert result.alignment.shift == pytest.approx((0.0, 0.0), abs=0.05)


# --------------------------------------------------------------------------- evaluation protocol
def test_evaluate_known_answers() -> None:
    truths = [[((0, 0, 30, 30), "open"), ((100, 100, 130, 130), "short")], [((10, 10, 40, 40), "spur")]]
    dets = [
        [
            Scored((2, 2, 32, 32), "open", 0.9),  # hit
            Scored((1, 1, 31, 31), "open", 0.8),  # duplicate: false alarm
            Scored((100, 100, 130, 130), "open", 0.7),  # right place, wrong type: false alarm
        ],
        [Scored((10, 10, 40, 40), "spur", 0.95)],
    ]
    r = evaluate(dets, truths, DEFECT_TYPES)
    assert (r["true_positives"], r["detected"], r["truth"]) == (2, 4, 3)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["per_type"]["short"]["recall"] == 0.0
    assert r["per_type"]["spur"]["ap"] == 1.0
    assert r["per_type"]["open"]["ap"] == 1.0  # its one truth is found first
    assert r["per_type"]["short"]["ap"] == 0.0
    assert r["map"] == pytest.approx(2 / 3, abs=1e-4)
    # Image 1: 3 open predicted vs 1, 0 short vs 1 → |2| + |1|; image 2 exact.
    assert r["count_accuracy"] == 0.5
    assert r["count_mae"] == pytest.approx(1.5)
    # The operating threshold drops the two weaker false alarms.
    r2 = evaluate(dets, truths, DEFECT_TYPES, operating_threshold=0.85)
    assert (r2["precision"], r2["per_type"]["open"]["ap"]) == (1.0, 1.0)


def test_iou_threshold_is_strict() -> None:
    # IoU exactly 1/3 does not count ("larger than 0.33" — and 1/3 > 0.33, so use a smaller one).
    a, b = (0, 0, 10, 10), (0, 0, 10, 3)  # IoU 0.3
    assert iou(a, b) == pytest.approx(0.3)
    r = evaluate([[Scored(b, "open", 1.0)]], [[(a, "open")]], DEFECT_TYPES)
    assert r["true_positives"] == 0


def test_average_precision_hand_computed() -> None:
    # Ranked: hit, miss, hit with 2 truths → precision 1 at recall .5, 2/3 at recall 1.
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


# --------------------------------------------------------------------------- dataset
def test_annotations_parse_spaces_and_commas(tmp_path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("1 2 30 40 1\n5,6,25,26,6\n\n")
    boxes = read_annotations(f)
    assert [(b.as_tuple(), b.type) for b in boxes] == [((1, 2, 30, 40), "open"), ((5, 6, 25, 26), "pin-hole")]
    f.write_text("1 2 30 40 9\n")
    with pytest.raises(FormatError, match="unknown defect type 9"):
        read_annotations(f)
    f.write_text("1 2 30\n")
    with pytest.raises(FormatError, match="line 1"):
        read_annotations(f)


def test_read_list_real_deeppcb(shared) -> None:
    pairs = read_list(shared / DEEPPCB, "test.txt")
    assert len(pairs) == 331
    p = pairs[0]
    assert p.test.name.endswith("_test.jpg") and p.template.name.endswith("_temp.jpg")
    assert p.test.is_file() and p.template.is_file() and p.annotations is not None
    assert len(read_annotations(p.annotations)) >= 1
    with pytest.raises(FabsightError, match="no such list file"):
        read_list(shared / DEEPPCB, "nope.txt")


# --------------------------------------------------------------------------- learned model
@pytest.fixture(scope="module")
def trained(shared, tmp_path_factory):
    """A model trained through the CLI on 40 real training pairs."""
    out = tmp_path_factory.mktemp("model") / "pcb"
    res = CliRunner().invoke(
        app,
        [
            "inspect",
            "train",
            str(shared / DEEPPCB),
            "--list",
            "trainval.txt",
            "--limit",
            "40",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_estimator_api() -> None:
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    m = TemplateInspector(tolerance=3)
    assert clone(m).get_params()["tolerance"] == 3
    with pytest.raises(NotFittedError):
        m.predict([(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))])


def test_train_writes_card(trained) -> None:
    out, summary = trained
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == "golden-template-inspection"
    assert set(card["classes"]) == {"background", *DEFECT_TYPES}
    assert 0 < card["extra"]["operating_threshold"] < 1
    assert set(card["extra"]["box_models"]) == set(DEFECT_TYPES)
    # The detector proposes a candidate for nearly every annotated defect.
    assert summary["defects_with_a_candidate"] >= 0.95 * summary["annotated_defects"]
    assert summary["out_of_fold"]["f_score"] > 0.8


def test_eval_on_held_out_pairs(trained, shared, tmp_path) -> None:
    out, _ = trained
    res = CliRunner().invoke(
        app,
        [
            "inspect",
            "eval",
            str(out),
            str(shared / DEEPPCB),
            "--list",
            "test.txt",
            "--limit",
            "25",
            "--render",
            str(tmp_path / "err"),
            "--render-limit",
            "2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["images"] == 25
    assert r["f_score"] > 0.85 and r["map"] > 0.8
    assert set(r["per_type"]) == set(DEFECT_TYPES)
    assert len(list((tmp_path / "err").glob("*.png"))) == r["rendered"] <= 2


def test_trained_model_types_synthetic_defects(trained, template, synthetic) -> None:
    test, _, boxes = synthetic
    result = inspect_pair(test, template, load_inspector(trained[0]), min_confidence=0.0)
    for kind, box in boxes.items():
        hits = [d for d in result.detections if iou(d.box, box) > 0.0]
        assert hits and max(hits, key=lambda d: d.confidence).type == kind, (kind, result.detections)


# --------------------------------------------------------------------------- CLI
def test_cli_pair_short_form_json_and_png(shared, tmp_path) -> None:
    stem = shared / DEEPPCB / "group00041/00041/00041000"
    png = tmp_path / "boxes.png"
    res = CliRunner().invoke(app, ["inspect", f"{stem}_test.jpg", f"{stem}_temp.jpg", "--out", str(png), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    truth = read_annotations(shared / DEEPPCB / "group00041/00041_not/00041000.txt")
    # Every annotated defect is found by the untrained detector (boxes are tight, so test overlap).
    for t in truth:
        assert any(iou(t.as_tuple(), d["box"]) > 0 for d in r["defects"]), t
    assert r["counts"]["defect"] == r["total"] == len(r["defects"])
    img = cv2.imread(str(png))
    assert img.shape == (640, 640, 3)
    assert np.count_nonzero(np.any(img != img[..., :1], axis=2)) > 0  # coloured boxes were drawn


def test_cli_user_errors_are_one_line(shared, tmp_path, monkeypatch, capsys) -> None:
    from fabsight.cli.main import main

    stem = shared / DEEPPCB / "group00041/00041/00041000"
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((100, 120), np.uint8))
    monkeypatch.setattr(sys, "argv", ["fabsight", "inspect", f"{stem}_test.jpg", str(small)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "differs from its template" in err and "120x100" in err
    with pytest.raises(FabsightError, match="not a fabsight model directory"):
        load_inspector(tmp_path)


def test_cli_folder_skips_bad_pairs(shared, tmp_path, trained) -> None:
    src = shared / DEEPPCB / "group00041/00041"
    root = tmp_path / "pairs"
    root.mkdir()
    for n in ("00041000", "00041001"):
        for part in ("test", "temp"):
            (root / f"{n}_{part}.jpg").write_bytes((src / f"{n}_{part}.jpg").read_bytes())
    (root / "bad_test.jpg").write_bytes(b"not a jpeg")
    (root / "bad_temp.jpg").write_bytes((src / "00041000_temp.jpg").read_bytes())
    cv2.imwrite(str(root / "odd_test.jpg"), np.zeros((64, 64), np.uint8))
    (root / "odd_temp.jpg").write_bytes((src / "00041000_temp.jpg").read_bytes())
    out = tmp_path / "res.jsonl"
    res = CliRunner().invoke(
        app, ["inspect", "folder", str(root), "--model", str(trained[0]), "--out", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert (s["pairs"], s["inspected"], len(s["errors"])) == (4, 2, 2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    good = [r for r in rows if "error" not in r]
    assert all(set(r["counts"]) == set(DEFECT_TYPES) for r in good)
    assert sum(r["total"] for r in good) == sum(s["counts"].values()) > 0
    errs = {r["pair"]: r["error"] for r in rows if "error" in r}
    assert "not a readable image" in errs["bad"] and "differs from its template" in errs["odd"]


def test_trained_model_ignores_scanner_nuisance(trained, template) -> None:
    """A defect-free board, warped by ≤2 px and with every line a pixel thicker, is clean."""
    from fabsight.inspect.model import nuisance_copy

    model = load_inspector(trained[0])
    for seed in range(3):
        moved = nuisance_copy(template, np.random.default_rng(seed))
        assert np.mean((moved < 128) != (template < 128)) > 0.01  # the copy really differs
        result = inspect_pair(moved, template, model)
        assert len(result.detections) <= 1, result.detections
