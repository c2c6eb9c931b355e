"""Auto-labelling and the review queue: routing, ordering by value, accept/correct moving files, CLI."""

from __future__ import annotations

import csv
import importlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.errors import FabsightError
from fabsight.io import read_maps
from fabsight.labeling import accept, autolabel, correct, export_accepted, list_queue, review_scores
from fabsight.synth import generate_map
from fabsight.types import WaferMap

CLASSES = ["Center", "Edge-Ring", "none"]


class FakeModel:
    """Test double with the wafer classifier's interface; each map's ``extras['fake']`` says
    what the model "sees": (label, probability, runner-up probability, ood score, embedding)."""

    classes_ = np.array(CLASSES)

    def predict_details(self, maps):
        out = []
        for m in maps:
            label, p, p2, ood, _ = m.extras["fake"]
            other = next(c for c in CLASSES if c != label)
            out.append(
                {
                    "label": label,
                    "probability": p,
                    "top3": [[label, p], [other, p2]],
                    "needs_review": ood > 10,
                    "review_reason": "out of distribution" if ood > 10 else None,
                    "ood_score": ood,
                }
            )
        return out

    def embed(self, maps):
        return np.array([m.extras["fake"][4] for m in maps], dtype=float)


def _map(i: int, label: str, p: float, p2: float, ood: float, emb) -> WaferMap:
    pattern = label if label in ("Center", "Edge-Ring") else "none"
    grid = generate_map(pattern, (26, 26), np.random.default_rng(i))
    return WaferMap(grid, lot_id="LOT1", wafer_id=str(i), extras={"fake": (label, p, p2, ood, emb)})


@pytest.fixture
def batch() -> list[WaferMap]:
    return [
        _map(0, "Center", 0.99, 0.01, 1.0, [1, 0, 0]),  # confident → labeled/Center
        _map(1, "Edge-Ring", 0.97, 0.02, 2.0, [0, 1, 0]),  # confident → labeled/Edge-Ring
        _map(2, "none", 0.95, 0.03, 3.0, [0, 0, 1]),  # confident → labeled/none
        _map(3, "Center", 0.51, 0.49, 4.0, [1, 1, 0]),  # a coin toss → review, first
        _map(4, "none", 0.85, 0.10, 5.0, [1, 0, 1]),  # mildly unsure → review, last
        _map(5, "Edge-Ring", 0.99, 0.01, 50.0, [0, 1, 1]),  # sure but out of distribution → review, second
    ]


def test_review_scores_known_values() -> None:
    top2 = np.array([[0.5, 0.5], [0.9, 0.05], [0.6, 0.3], [0.6, 0.3]])
    s = review_scores(top2, np.array([0.1, 0.1, 0.9, 0.1]), None)
    np.testing.assert_allclose(s["uncertainty"], [1.0, 0.15, 0.7, 0.7])
    # Noisy-OR of uncertainty and novelty, times 0.75 (no embeddings: every map equally typical).
    np.testing.assert_allclose(s["value"], [0.75, 0.17625, 0.7275, 0.5475])


def test_density_prefers_maps_typical_of_many() -> None:
    rng = np.random.default_rng(0)
    cluster = np.array([1.0, 0, 0]) + 0.01 * rng.normal(size=(4, 3))
    emb = np.vstack([cluster, [[0, 0, 1.0]]])
    s = review_scores(np.full((5, 2), [0.6, 0.3]), np.full(5, 0.5), emb)
    assert np.argmin(s["value"]) == 4 and s["density"][4] == 0
    assert s["density"].max() == pytest.approx(1.0)
    assert (s["value"][:4] > s["value"][4]).all()


def test_autolabel_routes_and_orders(tmp_path, batch) -> None:
    out = tmp_path / "al"
    summary = autolabel(batch, FakeModel(), out, threshold=0.9)
    assert (summary.total, summary.labeled, summary.review) == (6, 3, 3)
    assert summary.labeled_per_class == {"Center": 1, "Edge-Ring": 1, "none": 1}
    labeled = read_maps(out / "labeled")  # the layout `fabsight wafer train` reads
    assert sorted(m.label for m in labeled) == ["Center", "Edge-Ring", "none"]
    np.testing.assert_array_equal(next(m for m in labeled if m.label == "Center").grid, batch[0].grid)
    queue = list_queue(out)
    assert [i.wafer_id for i in queue] == ["3", "5", "4"]
    assert queue[1].reason == "out of distribution" and "< threshold 0.90" in queue[2].reason
    assert sorted(p.name for p in (out / "pending").iterdir()) == sorted(i.file.split("/")[-1] for i in queue)
    with pytest.raises(FabsightError, match="already exists"):
        autolabel(batch, FakeModel(), out)


def test_accept_and_correct_move_the_file(tmp_path, batch) -> None:
    out = tmp_path / "al"
    autolabel(batch, FakeModel(), out)
    first, second, third = list_queue(out)
    item = accept(out, first.id)
    assert item.status == "accepted" and item.label == "Center" and item.file.startswith("labeled/Center/")
    assert (out / item.file).is_file() and not (out / first.file).exists()
    with pytest.raises(FabsightError, match="not pending"):
        accept(out, first.id)
    fixed = correct(out, second.id, "Scratch")  # a class the model does not know yet
    assert fixed.status == "corrected" and (out / "labeled" / "Scratch" / (out / fixed.file).name).is_file()
    with pytest.raises(FabsightError, match="class folder name"):
        correct(out, third.id, "../evil")
    with pytest.raises(FabsightError, match="no queue item"):
        accept(out, 999)
    assert [i.id for i in list_queue(out)] == [third.id]
    assert sorted(m.label for m in read_maps(out / "labeled")) == ["Center", "Center", "Edge-Ring", "Scratch", "none"]
    n = export_accepted(out, tmp_path / "labels.csv")
    rows = list(csv.DictReader((tmp_path / "labels.csv").read_text().splitlines()))
    assert n == len(rows) == 5
    assert sorted((r["label"], r["origin"]) for r in rows if r["origin"] == "human") == [
        ("Center", "human"),
        ("Scratch", "human"),
    ]
    assert export_accepted(out, tmp_path / "human.csv", include_auto=False) == 2


def test_cli_autolabel_and_review(tmp_path, batch, monkeypatch) -> None:
    from fabsight.io import write_folder

    src = write_folder([WaferMap(m.grid, lot_id=m.lot_id, wafer_id=m.wafer_id) for m in batch], tmp_path / "raw")
    by_grid = {m.grid.tobytes(): m.extras for m in batch}

    class FromFiles(FakeModel):  # maps read back from disk lose extras: look them up by content
        def predict_details(self, maps):
            return super().predict_details([WaferMap(m.grid, extras=by_grid[m.grid.tobytes()]) for m in maps])

        def embed(self, maps):
            return super().embed([WaferMap(m.grid, extras=by_grid[m.grid.tobytes()]) for m in maps])

    monkeypatch.setattr("fabsight.cli.monitor.load_classifier", lambda path, runtime="torch": FromFiles())
    runner = CliRunner()
    out = tmp_path / "al"
    r = runner.invoke(app, ["autolabel", str(src), "--model", str(tmp_path), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["review"] == 3
    r = runner.invoke(app, ["review", str(out), "--list", "--json"])
    queue = json.loads(r.stdout)
    assert [q["predicted"] for q in queue] == ["Center", "Edge-Ring", "none"]
    r = runner.invoke(app, ["review", str(out), "--accept", str(queue[0]["id"]), "--label", "Donut", "--json"])
    assert json.loads(r.stdout)["status"] == "corrected"
    # Interactive: accept the next map's prediction, then quit.
    r = runner.invoke(app, ["review", str(out), "--interactive", "--json"], input="\nq\n")
    assert r.exit_code == 0, r.output
    # CliRunner echoes the typed answers into stdout (a terminal shows them instead).
    assert json.loads(r.stdout[r.stdout.index("{") :]) == {"accepted": 1, "corrected": 0, "skipped": 0, "pending": 1}
    r = runner.invoke(app, ["review", str(out), "--export", str(tmp_path / "l.csv"), "--json"])
    assert json.loads(r.stdout)["rows"] == 5
    r = runner.invoke(app, ["review", str(tmp_path / "raw"), "--list"])
    assert r.exit_code != 0 and "not an auto-label folder" in str(r.exception)


def test_density_on_a_large_queue_uses_a_bounded_reference(monkeypatch) -> None:
    mod = importlib.import_module("fabsight.labeling.autolabel")  # the package's `autolabel` is the function

    rng = np.random.default_rng(1)
    emb = np.vstack([np.tile([1.0, 0, 0], (300, 1)), rng.normal(size=(30, 3))]) + 0.01 * rng.normal(size=(330, 3))
    full = mod._neighbour_similarity(emb)
    monkeypatch.setattr(mod, "DENSITY_REFERENCE", 100)
    monkeypatch.setattr(mod, "DENSITY_BLOCK", 64)
    sampled = mod._neighbour_similarity(emb)
    # The 300 near-identical maps stay the most typical with a 100-map reference.
    assert full[:300].min() > full[300:].max() and sampled[:300].min() > sampled[300:].max()
    np.testing.assert_allclose(sampled[:300], full[:300], atol=1e-3)
