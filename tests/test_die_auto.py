"""``die train --auto``: fold planning, the selection rule, input sizes, the search end to end, bootstrap intervals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clikit import run_cli
from fabsight.die import auto
from fabsight.die.data import ImageFolder
from fabsight.die.metrics import bootstrap_interval

torch.set_num_threads(1)


def _folder(counts: dict[str, int]) -> ImageFolder:
    labels = np.repeat(np.arange(len(counts)), list(counts.values()))
    return ImageFolder(None, [None] * len(labels), labels, list(counts))  # type: ignore[arg-type]


def test_folds_come_from_the_smallest_class_and_fall_back_with_a_reason():
    k, repeats, notes = auto.plan_folds(_folder({"a": 10, "b": 10}))
    assert (k, repeats, notes) == (5, 5, [])  # 20 images: as many repeats as allowed
    assert auto.plan_folds(_folder({"a": 500, "b": 400}))[:2] == (5, 1)
    k, _, notes = auto.plan_folds(_folder({"a": 10, "rare": 3}))
    assert k == 3 and "class 'rare' has only 3 images" in notes[0]
    k, repeats, notes = auto.plan_folds(_folder({"a": 10, "single": 1}))
    assert (k, repeats) == (0, 0) and "class 'single' has 1 image" in notes[0] and "no search" in notes[0]


def _scores(method: str, folds: list[float], C: float = 0.5) -> auto.Scores:
    dim = 320 + 43 * (method == "hybrid")
    return auto.Scores(auto.Candidate("efficientnet_lite0", 224, ("blocks.6",), method, C, dim), np.asarray(folds))


def test_a_complex_method_must_win_by_more_than_one_standard_error():
    probe = _scores("probe", [0.8, 0.6, 0.9, 0.7, 0.8])
    noisy = _scores("hybrid", [0.9, 0.5, 1.0, 0.6, 0.9])  # +0.02 on average, swinging ±0.1: not clear
    chosen, why = auto.pick([probe, noisy], folds=5)
    assert chosen == probe.candidate and "not clearly" in why
    steady = _scores("hybrid", [0.85, 0.66, 0.95, 0.76, 0.86])  # +0.06 on every fold
    chosen, why = auto.pick([probe, steady], folds=5)
    assert chosen == steady.candidate and "not clearly" not in why and "best of 1" in why
    # among probes the best mean wins outright, ties go to the simpler (smaller C here)
    strong, weak = _scores("probe", [0.9] * 5, C=0.05), _scores("probe", [0.9] * 5, C=0.5)
    assert auto.pick([weak, strong], folds=5)[0] == strong.candidate


def _layered(layers: dict[str, tuple[int, int]]) -> SimpleNamespace:
    return SimpleNamespace(cfg=SimpleNamespace(layers=layers, input_size=(224, 224)))


def test_layer_sets_follow_the_backbone_shape():
    vit = {**{f"blocks.{i}": (384, 14) for i in range(12)}, "head": (384, 14)}
    assert auto.layer_sets(_layered(vit)) == [("blocks.8",), ("blocks.10",), ("head",)]
    cnn = {"blocks.2": (40, 8), "blocks.4": (112, 16), "blocks.6": (320, 32), "head": (1280, 32)}
    assert auto.layer_sets(_layered(cnn)) == [("blocks.4",), ("blocks.6",), ("blocks.4", "blocks.6"),
                                              ("blocks.6", "head")]
    # a size the user gives: a ViT's rounded up to its 14-px patch, a CNN's kept
    assert auto.candidate_sizes(_layered(vit), {}, 64) == [70]
    assert auto.candidate_sizes(_layered(cnn), {}, 64) == [64]


def test_the_default_probe_stands_unless_another_wins_clearly():
    def probe(backbone: str, layers: tuple[str, ...], folds: list[float]) -> auto.Scores:
        return auto.Scores(auto.Candidate(backbone, 224, layers, "probe", 0.5, 384), np.asarray(folds))

    defaults = {"dinov2_vits14": (224, ("blocks.10",)), "efficientnet_lite0": (224, ("blocks.6", "head"))}
    ref = probe("dinov2_vits14", ("blocks.10",), [0.6, 0.4, 0.8, 0.5, 0.6])
    lucky = probe("efficientnet_lite0", ("blocks.4",), [0.8, 0.3, 1.0, 0.4, 0.7])  # +0.06, swinging ±0.2
    chosen, why = auto.pick([lucky, ref], folds=5, defaults=defaults)
    assert chosen == ref.candidate and "the default stands" in why
    clear = probe("efficientnet_lite0", ("blocks.4",), [0.7, 0.5, 0.9, 0.6, 0.7])  # +0.1 on every fold
    assert auto.pick([clear, ref], folds=5, defaults=defaults)[0] == clear.candidate
    assert auto.pick([lucky, ref], folds=5)[0] == lucky.candidate  # no default known: the best mean
    # +0.1 with SE 0.045 is clear against one rival, not as the best of 28 (chance alone reaches ~2.6 SE)
    edge = probe("efficientnet_lite0", ("blocks.6",), [0.8, 0.4, 1.0, 0.5, 0.7])
    assert auto.pick([edge, ref], folds=5, defaults=defaults)[0] == edge.candidate
    fillers = [probe("efficientnet_lite0", (f"blocks.{i}",), [0.3] * 5) for i in range(26)]
    chosen, why = auto.pick([edge, ref, *fillers], folds=5, defaults=defaults)
    assert chosen == ref.candidate and "best of 27" in why


def test_input_sizes_follow_the_images():
    assert auto.input_sizes(224, 14, {"short_side_median": 64}) == [224, 70]  # small crops: near their own size
    assert auto.input_sizes(224, 32, {"short_side_median": 600}) == [224, 352]  # large images: more pixels too
    assert auto.input_sizes(224, 14, {"short_side_median": 200}) == [224]


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_images():
    assert bootstrap_interval(["a", "b"] * 10, ["a", "b"] * 10)["accuracy"] == [1.0, 1.0]
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 1000):
        truth = rng.choice(["a", "b", "c"], size=n)
        pred = np.where(rng.random(n) < 0.8, truth, "a")
        ci = bootstrap_interval(truth, pred)
        acc = float(np.mean(truth == pred))
        assert ci["accuracy"][0] <= acc <= ci["accuracy"][1]
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    assert widths[1] < widths[0] / 3  # ~ 1/√n


def _textures(root, n: int, seed: int) -> None:
    """Stripes vs dots, in two sizes and both grey and colour (mixed inputs the search must report)."""
    import cv2

    rng = np.random.default_rng(seed)
    for cls in ("stripes", "dots"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = 40 if i % 2 else 48
            img = np.full((size, size), 30, np.uint8)
            if cls == "stripes":
                period = int(rng.integers(5, 9))
                img[:, np.arange(size) % period < period // 2] = 220
            else:
                for x, y in rng.integers(3, size - 3, size=(10, 2)):
                    cv2.circle(img, (int(x), int(y)), 2, 220, -1)
            if i % 3 == 0:
                img = np.dstack([img, img // 2, img])  # a colour image among grey ones
            cv2.imwrite(str(root / cls / f"{seed}_{i}.png"), img)


def test_auto_is_the_default_and_records_the_search_in_the_card(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FABSIGHT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "BUILTIN_BACKBONES", ("efficientnet_lite0",))  # one backbone keeps the test short
    _textures(tmp_path / "train", 8, seed=0)
    _textures(tmp_path / "test", 6, seed=1)
    code, out, err = run_cli(["die", "train", tmp_path / "train", "--out", tmp_path / "m", "--input-size", 56,
                              "--cv", 2, "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    search = json.loads(out)["training"]["auto"]
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["auto"] == search
    names = [c["name"] for c in search["candidates"]]
    assert search["winner"] in names and len(names) == len(set(names))
    assert {tuple(c["layers"]) for c in search["candidates"]} == {
        ("blocks.4",), ("blocks.6",), ("blocks.4", "blocks.6"), ("blocks.6", "head")}
    assert {c["input_size"] for c in search["candidates"]} == {56}
    assert any(c["method"] == "hybrid" for c in search["candidates"])
    assert search["candidates"][0]["cv_mean"] > 0.9  # stripes vs dots: easy for any backbone
    winner = next(c for c in search["candidates"] if c["name"] == search["winner"])
    assert card["backbone"]["name"] == winner["backbone"] and card["backbone"]["layers"] == winner["layers"]
    assert card["training"]["method"] == winner["method"] and card["training"]["C"] == winner["C"]
    assert (search["folds"], search["repeats"]) == (5, 5)
    assert any("2 sizes" in n for n in search["notes"]) and any("mixed grey" in n for n in search["notes"])

    code, out, err = run_cli(["die", "eval", tmp_path / "m", tmp_path / "test", "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    m = json.loads(out)
    lo, hi = m["interval"]["accuracy"]
    assert lo <= m["accuracy"] <= hi and m["accuracy"] > 0.8
    code, out, err = run_cli(["die", "eval", tmp_path / "m", tmp_path / "test", "--device", "cpu"], capsys)
    assert code == 0 and "95% bootstrap interval: accuracy" in out


def test_auto_refuses_options_it_would_ignore(tmp_path, capsys):
    _textures(tmp_path / "train", 3, seed=0)
    code, _, err = run_cli(["die", "train", tmp_path / "train", "--out", tmp_path / "m", "--auto",
                              "--method", "hybrid"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--auto chooses the method and layers" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("bad", ["timm:resnet18"])
def test_a_timm_backbone_without_weights_is_one_line(tmp_path, capsys, bad):
    _textures(tmp_path / "train", 3, seed=0)
    code, _, err = run_cli(["die", "train", tmp_path / "train", "--out", tmp_path / "m", "--backbone", bad,
                              "--auto"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: timm:resnet18"), err


def test_hierarchy_levels_are_measured_on_held_out_folds(tmp_path):
    import cv2

    from fabsight.die.model import train

    _textures(tmp_path / "train", 6, seed=0)
    (tmp_path / "train" / "ok").mkdir()
    for i in range(6):  # plain, slightly noisy tiles: the no-defect class
        img = np.random.default_rng(i).integers(20, 40, size=(40, 40)).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "train" / "ok" / f"{i}.png"), img)
    result = train(tmp_path / "train", tmp_path / "m", backbone="efficientnet_lite0", method="hierarchical",
                   input_size=32, cv_folds=3, cache=tmp_path / "cache")
    levels = result.card.extra["hierarchy"]
    assert levels["measured_on"] == "held-out images of the 3 cross-validation folds"
    assert levels["defect_vs_ok"]["n"] == levels["overall"]["n"] == 18  # every image scored once, held out
    assert levels["overall"]["accuracy"] == pytest.approx(result.card.metrics["accuracy"])  # the same predictions
    assert levels["defect_vs_ok"]["accuracy"] > 0.8
