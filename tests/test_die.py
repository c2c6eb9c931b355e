"""Die classification: data, features, classifiers, CLI, adaptation and discovery on real crops."""

from __future__ import annotations

import itertools
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from fabsight.backbones import create_backbone
from fabsight.die.classifier import DieClassifier, HierarchicalClassifier, ProbeClassifier
from fabsight.die.data import read_image, scan_folder
from fabsight.errors import FabsightError

torch.set_num_threads(1)  # one thread is far faster than two on a shared, oversubscribed box


@pytest.fixture(scope="module")
def crops(shared, tmp_path_factory):
    """DeepPCB defect crops (+ template 'ok' crops) from the first pairs of each original split."""
    from fabsight.die.datasets import prepare_deeppcb_crops

    out = tmp_path_factory.mktemp("die") / "deeppcb"
    counts = prepare_deeppcb_crops(shared / "data" / "deeppcb", out, with_ok=True, max_pairs=4)
    return out, counts


@pytest.fixture(scope="module")
def small_bb():
    return create_backbone("efficientnet_lite0", input_size=64)


def _blobs(n_per=30, seed=0):
    """Four classes in two well separated super-groups: {a, b} near +5, {c, d} near −5."""
    rng = np.random.default_rng(seed)
    centres = {"a": [5, 1], "b": [5, -1], "c": [-5, 1], "d": [-5, -1]}
    X = np.concatenate([rng.normal(c + [0] * 6, 0.3, size=(n_per, 8)) for c in centres.values()])
    y = np.repeat(list(centres), n_per)
    return X, y


def test_prepare_crops_matches_annotations(shared, crops):
    out, counts = crops
    lines = (shared / "data" / "deeppcb" / "trainval.txt").read_text().splitlines()[:4]
    n_boxes = sum(len((shared / "data" / "deeppcb" / ln.split()[1]).read_text().split()) // 5 for ln in lines)
    defects = sum(v for k, v in counts["train"].items() if k != "ok")
    assert defects == counts["train"]["ok"] == n_boxes > 0
    folder = scan_folder(out / "train")
    assert set(folder.classes) <= {"open", "short", "mousebite", "spur", "spurious_copper", "pin_hole", "ok"}
    img = read_image(folder.paths[0])
    assert img.ndim == 2 and img.dtype == np.uint8 and img.shape[0] == img.shape[1] >= 64


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(FabsightError, match="no class sub-folders"):
        scan_folder(tmp_path)
    (tmp_path / "scratch").mkdir()
    bad = tmp_path / "scratch" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(FabsightError, match=r"broken\.png: cannot be decoded"):
        read_image(bad)
    with pytest.raises(FabsightError, match="'scratch' is not one the model knows"):
        scan_folder(tmp_path, classes=["open", "short"])


def test_image_folders_given_to_predict_are_searched_recursively(tmp_path):
    """`die predict MODEL FOLDER` (and export --sample) on class folders, lots, nested runs; hidden ones skipped."""
    import cv2

    from fabsight.die.data import expand_inputs

    for rel in ("lot1/a.png", "lot1/run2/b.jpg", "lot2/c.tif", ".ipynb_checkpoints/d.png", "lot2/.e.png",
                "lot2/notes.txt", "top.bmp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        suffix = ".png" if rel.endswith(".txt") else rel[rel.rindex("."):]
        (tmp_path / rel).write_bytes(cv2.imencode(suffix, np.zeros((8, 8), np.uint8))[1].tobytes())
    found = [p.relative_to(tmp_path).as_posix() for p in expand_inputs([tmp_path])]
    assert found == ["lot1/a.png", "lot1/run2/b.jpg", "lot2/c.tif", "top.bmp"]
    assert [p.name for p in expand_inputs([tmp_path / "lot2" / "c.tif", tmp_path / "lot1"])] == ["c.tif", "a.png",
                                                                                                 "b.jpg"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FabsightError, match="contains no images"):
        expand_inputs([tmp_path / "empty"])


def test_probe_is_a_calibrated_sklearn_estimator():
    X, y = _blobs()
    probe = ProbeClassifier(C=0.5)
    with pytest.raises(NotFittedError):
        probe.predict(X)
    probe.fit(X, y)
    assert clone(probe).get_params() == probe.get_params()
    assert (probe.predict(X) == y).mean() > 0.9
    p = probe.predict_proba(X)
    assert np.allclose(p.sum(1), 1) and probe.temperature_ > 0
    flat = ProbeClassifier(calibrate=False).fit(X, y)
    assert flat.temperature_ == 1.0 and not np.allclose(flat.predict_proba(X), p)


def test_hierarchy_derives_the_true_groups_and_routes():
    X, y = _blobs()
    ok = np.random.default_rng(1).normal([0, 0, 5] + [0] * 5, 0.3, size=(30, 8))
    X2, y2 = np.concatenate([X, ok]), np.concatenate([y, ["ok"] * 30])
    h = HierarchicalClassifier(ok_class="ok", n_groups=2).fit(X2, y2)
    assert sorted(sorted(g) for g in h.groups_.values()) == [["a", "b"], ["c", "d"]]
    assert (h.predict(X2) == y2).mean() > 0.9
    assert np.allclose(h.predict_proba(X2).sum(1), 1)
    report = h.level_report(X2, y2)
    assert report["defect_vs_ok"]["accuracy"] > 0.95 and report["group"]["accuracy"] > 0.95
    with pytest.raises(FabsightError, match="group map names classes not in the data: zz"):
        HierarchicalClassifier(groups={"g": ["a", "zz"]}).fit(X, y)


def test_needs_review_flags_far_and_uncertain_images():
    rng = np.random.default_rng(0)
    centres = {"a": [0, 0.4], "b": [0, -0.4], "c": [6, 0]}  # a and b overlap, c is apart
    X = np.concatenate([rng.normal(c, 0.5, size=(80, 2)) for c in centres.values()])
    y = np.repeat(list(centres), 80)
    clf = DieClassifier(review_quantile=0.95, min_confidence=0.7).fit(X, y)
    decided = clf.decide(np.array([[6.0, 0.0], [60.0, 60.0], [0.0, 0.0]]))
    assert not decided[0]["needs_review"] and decided[0]["label"] == "c"
    assert "out_of_distribution" in decided[1]["review_reasons"]
    assert decided[2]["review_reasons"] == ["low_confidence"] and len(decided[2]["top"]) == 3
    assert 0.35 < decided[2]["confidence"] < 0.7  # calibrated: a coin flip between a and b
    assert np.mean([d["ood_score"] > 1 for d in clf.decide(X)]) <= 0.06


def test_embedding_cache_is_reused_and_keyed_by_layer(small_bb, crops, tmp_path, monkeypatch):
    from fabsight.die.embeddings import extract

    paths = scan_folder(crops[0] / "train").paths[:5]
    first = extract(small_bb, paths, 4, tmp_path, layers=["blocks.4"])
    assert first.shape == (5, 112)

    def boom(*_a, **_k):
        raise AssertionError("cache miss: the backbone ran again")

    monkeypatch.setattr(small_bb, "embed", boom)
    assert np.array_equal(extract(small_bb, paths, 4, tmp_path, layers=["blocks.4"]), first)
    with pytest.raises(AssertionError, match="cache miss"):
        extract(small_bb, paths, 4, tmp_path, layers=["head"])  # another layer is not cached yet


def test_handcrafted_features_are_rotation_robust_and_texture_sensitive():
    from fabsight.die.handcrafted import glcm_features, handcrafted_features, zernike_features

    rng = np.random.default_rng(0)
    img = np.zeros((64, 64), np.uint8)
    img[20:44, 28:36] = 255  # a bar
    assert handcrafted_features(img).shape == (43,)
    assert np.allclose(zernike_features(img), zernike_features(np.rot90(img)), atol=1e-3)
    noise = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    assert glcm_features(noise)[0] > 10 * glcm_features(img)[0]  # contrast at distance 1


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``fabsight ARGS`` in-process through the real entry point (error handling included)."""
    from fabsight.cli.main import main

    monkeypatch.setattr(sys, "argv", ["fabsight", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_train_eval_predict_end_to_end(crops, tmp_path, monkeypatch, capsys):
    from fabsight.die.model import DieModel, train

    root, _ = crops
    data = tmp_path / "train"
    shutil.copytree(root / "train", data)
    result = train(data, tmp_path / "model", backbone="efficientnet_lite0", method="hierarchical", input_size=64,
                   cv_folds=0, cache=tmp_path / "cache")
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["task"] == "die-classifier" and card["training"]["ok_class"] == "ok"
    assert card["backbone"]["layers"] == ["blocks.6", "head"] and card["input"]["size"] == [64, 64]
    levels = card["extra"]["hierarchy"]  # no held-out folds: no per-level figures (training-image ones mean nothing)
    assert "defect_vs_ok" not in levels and "no held-out folds" in levels["note"] and levels["groups"]
    model = DieModel(tmp_path / "model")
    metrics = model.evaluate(root / "test", cache=tmp_path / "cache")
    assert set(metrics) >= {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion"}
    chance = 1 / len(model.classes)
    assert metrics["balanced_accuracy"] > 2 * chance, metrics  # trained on 4 boards at 64 px: far from chance
    assert sum(map(sum, metrics["confusion"]["matrix"])) == metrics["n"]
    assert result.card.classes == model.classes

    # the CLI: JSON predictions, and a user mistake is one line with exit code 2
    test_img = next((root / "test" / "ok").iterdir())
    code, stdout, stderr = _cli(monkeypatch, capsys, "die", "predict", str(tmp_path / "model"), str(test_img),
                                "--json", "--device", "cpu")
    assert code == 0, stderr
    pred = json.loads(stdout)["results"][0]
    expected = model.predict([test_img])[0]
    assert pred["path"] == str(test_img) and len(pred["top"]) == 3
    assert pred["label"] == expected["label"] and pred["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)
    code, stdout, stderr = _cli(monkeypatch, capsys, "die", "eval", str(tmp_path / "model"),
                                str(tmp_path / "missing"), "--json")
    assert code == 2 and stdout == "" and stderr.startswith("error: ") and stderr.count("\n") == 1
    assert "missing: is not a directory of class folders" in stderr


@pytest.mark.slow
def test_adapt_one_epoch_then_resume(crops, tmp_path):
    from fabsight.die.adapt import adapt

    images = tmp_path / "unlabeled"
    images.mkdir()
    for p in scan_folder(crops[0] / "train").paths[:6]:
        shutil.copy(p, images / p.name)
    out = tmp_path / "adapted"
    first = adapt(images, out, backbone="efficientnet_lite0", epochs=1, batch_size=3, n_local=1, input_size=32,
                  device="cpu", lr=1e-3)
    assert first["epochs"] == 1 and np.isfinite(first["loss_per_epoch"][0])
    with pytest.raises(FabsightError, match="pass --resume"):
        adapt(images, out, backbone="efficientnet_lite0", epochs=2, batch_size=3, input_size=32, device="cpu")
    second = adapt(images, out, backbone="efficientnet_lite0", epochs=2, batch_size=3, n_local=1, input_size=32,
                   device="cpu", lr=1e-3, resume=True)
    assert second["loss_per_epoch"][0] == first["loss_per_epoch"][0] and len(second["loss_per_epoch"]) == 2
    adapted = create_backbone(out)
    base = create_backbone("efficientnet_lite0", input_size=32)
    x = base.preprocess([read_image(next(images.iterdir()))])
    assert adapted.cfg.input_size == (32, 32)
    assert not torch.allclose(adapted.embed(x), base.embed(x))  # the teacher moved
    # ... its weights, not its BatchNorm statistics: re-estimating those on multi-crop batches
    # is what cost DeepPCB probes 9-15 points (docs/benchmarks.md).
    buffers = dict(base.model.named_buffers())
    assert buffers and all(torch.equal(b, buffers[n]) for n, b in adapted.model.named_buffers())
    training = json.loads((out / "card.json").read_text())["training"]
    assert training["batchnorm_stats"] == "frozen" and training["head_warmup_steps"] == 0  # int(0.2 * 4 steps)
    # Crops made by worker processes: same number of steps, a finite loss, the count recorded.
    par = adapt(images, tmp_path / "par", backbone="efficientnet_lite0", epochs=1, batch_size=3, n_local=1,
                input_size=32, device="cpu", lr=1e-3, workers=2)
    assert par["crop_workers"] == 2 and len(par["loss_per_epoch"]) == 1 and np.isfinite(par["loss_per_epoch"][0])
    assert json.loads((tmp_path / "par" / "card.json").read_text())["training"]["crop_workers"] == 2
    with pytest.raises(FabsightError, match="--workers"):
        adapt(images, tmp_path / "bad", backbone="efficientnet_lite0", device="cpu", workers=-1)


def test_adapt_backbone_schedule_waits_for_the_head_then_ramps_and_decays():
    from fabsight.die.adapt import backbone_lr_factor

    f = [backbone_lr_factor(i, 100, 20) for i in range(100)]
    assert f[:20] == [0.0] * 20  # the head trains alone
    assert f[20] == pytest.approx(1 / 20) and f[39] == pytest.approx(1.0)  # linear ramp
    assert all(a >= b for a, b in itertools.pairwise(f[39:]))  # then a cosine decay ...
    assert f[-1] == pytest.approx(0.01, abs=1e-3)  # ... to 1 % of the peak
    assert backbone_lr_factor(0, 10, 0) == pytest.approx(1.0)  # no warm-up: the ramp is skipped, cosine from 1


def test_adapt_rejects_a_head_warmup_of_half_the_run(tmp_path):
    from fabsight.die.adapt import adapt

    with pytest.raises(FabsightError, match="--head-warmup"):
        adapt(tmp_path, tmp_path / "out", backbone="efficientnet_lite0", device="cpu", head_warmup=0.5)


def test_discover_separates_clear_groups(small_bb, tmp_path):
    from fabsight.die.discover import discover_folder

    rng = np.random.default_rng(0)
    import cv2

    for cls in ("stripes", "dots"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(8):
            img = np.zeros((64, 64), np.uint8)
            if cls == "stripes":
                img[:, (np.arange(64) + i) % 8 < 3] = 255
            else:
                for x, y in rng.integers(4, 60, size=(12, 2)):
                    cv2.circle(img, (int(x), int(y)), 2, 255, -1)
            cv2.imwrite(str(tmp_path / "imgs" / cls / f"{i}.png"), img)
    res = discover_folder(tmp_path / "imgs", backbone="efficientnet_lite0", input_size=64, method="kmeans",
                          k_range=range(2, 5), html_out=tmp_path / "sheet.html", export=tmp_path / "clusters",
                          cache=tmp_path / "cache")
    # no cluster mixes the two textures (a layer set may split one into sub-types: a reviewer merges them)
    assert res["n_images"] == 16 and res["agreement"]["purity"] == 1.0 and res["agreement"]["adjusted_rand"] > 0.5
    html = (tmp_path / "sheet.html").read_text()
    assert html.count("<section>") == res["n_clusters"] and "data:image/png;base64," in html
    # every candidate layer set was clustered; the chosen one is the best separated
    table = res["layer_search"]
    assert [r["layers"] for r in table] == [["blocks.4"], ["blocks.6"], ["blocks.4", "blocks.6"], ["blocks.6", "head"]]
    chosen = next(r for r in table if r.get("chosen"))
    assert chosen["layers"] == res["layers"] and chosen["silhouette"] == max(r["silhouette"] for r in table)
    assert all(-1 <= r["silhouette"] <= 1 and r["stability"] <= 1 for r in table)
    # exported: one label folder per cluster holding its members, and one review item per cluster to name
    review = json.loads((tmp_path / "clusters" / "review.json").read_text())["items"]
    assert len(review) == res["n_clusters"] and all(i["name"] is None for i in review)
    assert sorted(len(list((tmp_path / "clusters" / i["folder"]).iterdir())) for i in review) == sorted(
        c["size"] for c in res["clusters"])
    assert scan_folder(tmp_path / "clusters").counts() == {i["folder"]: i["size"] for i in review}


def _stripes_and_dots(root, n: int, seed: int, size: int = 40):
    """Two texture classes that no flip, 90° turn or brightness change turns into each other."""
    import cv2

    rng = np.random.default_rng(seed)
    for cls in ("stripes", "dots"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((size, size), 30, np.uint8)
            if cls == "stripes":
                period = int(rng.integers(5, 9))
                img[:, (np.arange(size) + i) % period < period // 2] = 220
            else:
                for x, y in rng.integers(3, size - 3, size=(10, 2)):
                    cv2.circle(img, (int(x), int(y)), 2, 220, -1)
            cv2.imwrite(str(root / cls / f"{seed}_{i}.png"), img)
    return root


def test_finetune_augmentation_is_a_dihedral_turn_plus_gain():
    from fabsight.die.finetune import augment_batch

    x = torch.zeros(64, 3, 8, 8)
    x[:, :, 0, 1] = 1.0  # one marked pixel next to a corner
    out = augment_batch(x, torch.Generator().manual_seed(0))
    marked = {(int(i), int(j)) for i, j in zip(*np.unravel_index(out[:, 0].flatten(1).argmax(1).numpy(), (8, 8)),
                                                strict=True)}
    dihedral = {(0, 1), (1, 0), (0, 6), (6, 0), (1, 7), (7, 1), (6, 7), (7, 6)}
    assert marked <= dihedral and len(marked) >= 6  # every turn/flip shows up in 64 draws
    background = out[:, :, 3, 3]
    assert background.std() > 0.05 and background.abs().max() <= 0.2  # offsets of up to ±0.2 σ


def test_finetune_learns_end_to_end_and_round_trips(tmp_path, monkeypatch, capsys):
    """Fine-tuning through the public train(): a held-out set is classified, and the saved
    model predicts exactly what the in-memory one did, through DieModel and the CLI."""
    from fabsight.die.model import DieModel, train

    data = _stripes_and_dots(tmp_path / "train", 14, seed=0)
    test = _stripes_and_dots(tmp_path / "test", 8, seed=1)
    result = train(data, tmp_path / "model", backbone="efficientnet_lite0", method="finetune", input_size=32,
                   epochs=4, batch_size=8)
    card = result.card
    assert card.files["network"] == "finetuned.safetensors" and card.training["best_epoch"] >= 1
    assert "validation split" in card.metrics["measured_on"] and card.metrics["n"] == 4
    model = DieModel(tmp_path / "model")
    metrics = model.evaluate(test)
    assert metrics["accuracy"] >= 0.9, metrics
    decisions = model.predict(scan_folder(test).paths[:3])
    assert all(np.isclose(sum(t["p"] for t in d["top"]), 1.0) for d in decisions)
    assert model.features(scan_folder(test).paths[:2]).shape == (2, 1280)

    code, stdout, stderr = _cli(monkeypatch, capsys, "die", "predict", str(tmp_path / "model"),
                                str(test / "dots"), "--json", "--device", "cpu")
    assert code == 0, stderr
    cli = json.loads(stdout)["results"]
    again = model.predict(scan_folder(test).subset(np.flatnonzero(scan_folder(test).labels == 0)).paths)
    assert [r["label"] for r in cli] == [d["label"] for d in again]
    assert [r["confidence"] for r in cli] == pytest.approx([d["confidence"] for d in again], abs=1e-5)

    # no silent fallback to PyTorch: before `fabsight export`, ONNX is refused in one line
    code, stdout, stderr = _cli(monkeypatch, capsys, "die", "predict", str(tmp_path / "model"),
                                str(test / "dots"), "--json", "--runtime", "onnx")
    assert code == 2 and stdout == "" and stderr.strip() == (f"error: {tmp_path / 'model'}: has no ONNX graph: run "
                                                             f"`fabsight export {tmp_path / 'model'} --onnx`")

    weights = tmp_path / "model" / "finetuned.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    code, stdout, stderr = _cli(monkeypatch, capsys, "die", "eval", str(tmp_path / "model"), str(test), "--json")
    assert code == 2 and stdout == "" and "do not match the hash in card.json" in stderr


def test_finetune_rejects_too_few_images(tmp_path):
    from fabsight.die.finetune import FinetuneClassifier

    data = _stripes_and_dots(tmp_path, 1, seed=0)
    with pytest.raises(FabsightError, match="at least two classes with ≥ 2 images"):
        FinetuneClassifier(input_size=32).fit(scan_folder(data).paths, ["stripes", "dots"])
    with pytest.raises(NotFittedError):
        FinetuneClassifier().predict(scan_folder(data).paths)
