"""Curation checks against planted problems with known answers (generated and real images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fabsight.curate import CurateOptions, curate, curate_images, curate_maps, detect_kind, write_clean_tree
from fabsight.curate.dedup import hamming_pairs
from fabsight.curate.plant import plant, textured_folder
from fabsight.curate.stats import balance, robust_threshold
from fabsight.errors import FabsightError

REPO = Path(__file__).resolve().parents[1]


def _flagged(manifest: dict, root: Path, check: str) -> set[str]:
    return {str(Path(r["path"]).relative_to(root)) for r in manifest["files"]
            if any(f["check"] == check for f in r["flags"])}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    work = tmp_path_factory.mktemp("curate")
    base = textured_folder(work / "base", per_class=16, size=80, seed=3)
    root = work / "planted"
    cwd = work / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        truth = plant(base, root, n=3, seed=1)
    assert list(cwd.iterdir()) == [], "plant() must write under OUT only, never in the working directory"
    return root, truth, curate_images([root])


@pytest.mark.parametrize("check", ["unreadable", "blurry", "blank", "leakage", "label_conflict"])
def test_each_planted_problem_is_found_and_nothing_else(planted: tuple[Path, dict, dict], check: str) -> None:
    root, truth, manifest = planted
    assert _flagged(manifest, root, check) == set(truth[check])


def test_exact_and_near_copies_drop_the_copy_and_keep_the_original(planted: tuple[Path, dict, dict]) -> None:
    root, truth, manifest = planted
    dup = _flagged(manifest, root, "duplicate") - set(truth["label_conflict"])
    assert dup == set(truth["exact"] + truth["near"] + truth["leakage"])
    rows = {str(Path(r["path"]).relative_to(root)): r for r in manifest["files"]}
    for near in truth["near"]:  # the 0.6× JPEG copy loses to its full-resolution PNG original
        original = str(Path(near).with_name(Path(near).stem.removeprefix("near_") + ".png"))
        assert rows[original]["keep"] and not rows[near]["keep"]
    kinds = {g["kind"] for g in manifest["groups"]}
    assert {"exact_bytes", "near_phash"} <= kinds


def test_leakage_keeps_the_train_copy_and_conflicts_keep_none(planted: tuple[Path, dict, dict]) -> None:
    root, truth, manifest = planted
    rows = {str(Path(r["path"]).relative_to(root)): r for r in manifest["files"]}
    for leak in truth["leakage"]:
        assert leak.startswith("test/") and not rows[leak]["keep"]
        assert rows["train/" + leak.split("/", 1)[1].replace("leak_", "")]["keep"]
    assert not any(rows[p]["keep"] for p in truth["label_conflict"])
    assert manifest["summary"]["label_conflict_groups"] == 3 and manifest["summary"]["leakage_groups"] == 3


def test_blur_threshold_comes_from_the_data_and_is_reported(planted: tuple[Path, dict, dict]) -> None:
    root, truth, manifest = planted
    t = manifest["thresholds"]["blurry"]
    sharp = [r["sharpness"] for r in manifest["files"] if str(Path(r["path"]).relative_to(root)) in truth["blurry"]]
    assert t["space"] == "log" and t["k"] == 3.0 and max(sharp) < t["threshold"] < t["median"]


def test_balance_is_measured_on_the_kept_train_split(planted: tuple[Path, dict, dict]) -> None:
    manifest = planted[2]
    kept = {}
    for r in manifest["files"]:
        if r["keep"] and r["split"] == "train":
            kept[r["label"]] = kept.get(r["label"], 0) + 1
    assert manifest["balance"]["split"] == "train" and manifest["balance"]["after"]["counts"] == kept


def test_banded_hamming_search_finds_exactly_the_brute_force_pairs() -> None:
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64)
    flips = rng.integers(0, 64, (60, 5))
    h[340:] = [h[i] ^ np.uint64(sum(1 << int(b) for b in set(flips[i]))) for i in range(60)]  # ≤ 5 bits off h[i]
    pairs, dist = hamming_pairs(h.tolist(), 5)
    x = h[:, None] ^ h[None, :]
    brute = np.unpackbits(x.astype(">u8").view(np.uint8).reshape(400, 400, 8), axis=2).sum(axis=2)
    i, j = np.nonzero(np.triu(brute <= 5, 1))
    assert {tuple(p) for p in pairs.tolist()} == set(zip(i.tolist(), j.tolist(), strict=True))
    assert len(pairs) >= 60 and dist.max() <= 5


def test_robust_threshold_ignores_a_bad_minority_and_balance_weights() -> None:
    v = np.r_[np.full(50, 100.0) * np.exp(np.linspace(-0.2, 0.2, 50)), [1.0, 2.0]]
    t = robust_threshold(v, 3.0, side="low", log=True)
    assert t is not None and 2.0 < t["threshold"] < 90.0 and abs(t["median"] - 100.0) < 5
    assert robust_threshold(np.ones(20), 3.0, side="low", log=True) is None  # no spread: no threshold
    b = balance({"a": 90, "b": 10})
    assert b["inverse_frequency"] == {"a": pytest.approx(100 / 180, abs=1e-4), "b": 5.0}
    assert b["imbalance_ratio"] == 9.0 and sum(b["effective_number"].values()) == pytest.approx(2.0, abs=1e-3)
    assert 1.0 < b["effective_number"]["b"] / b["effective_number"]["a"] < 9.0  # softer than 1/n


def _map(shape: tuple[int, int], fail: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    grid = np.where((yy - shape[0] / 2 + 0.5) ** 2 + (xx - shape[1] / 2 + 0.5) ** 2 <= (min(shape) / 2) ** 2, 1, 0)
    on = np.flatnonzero(grid.ravel())
    grid.ravel()[np.random.default_rng(seed).choice(on, fail, replace=False)] = 2
    return grid.astype(np.uint8)


def test_wafer_map_checks(tmp_path: Path) -> None:
    root = tmp_path / "maps"
    for split in ("train", "test"):
        for c in ("Center", "none"):
            (root / split / c).mkdir(parents=True)
    for i in range(4):
        np.save(root / "train" / "Center" / f"m{i}.npy", _map((26, 26), 40, i))
    np.save(root / "train" / "none" / "m0.npy", _map((26, 26), 40, 0))  # = train/Center/m0: label conflict
    np.save(root / "test" / "Center" / "m1.npy", _map((26, 26), 40, 1))  # = train/Center/m1: leakage
    np.save(root / "train" / "Center" / "empty.npy", _map((30, 30), 0, 0))  # no failing die, labelled Center
    np.save(root / "train" / "none" / "clean.npy", _map((32, 32), 0, 1))  # no failing die, labelled none: fine
    np.save(root / "train" / "none" / "off.npy", np.zeros((26, 26), np.uint8))
    bad = _map((26, 26), 5, 9).astype(np.int16)
    bad[3, 3] = 7
    np.save(root / "test" / "none" / "bad.npy", bad)
    m = curate([root])
    assert m["kind"] == "maps"
    flags = {str(Path(r["path"]).relative_to(root)): {f["check"] for f in r["flags"]} for r in m["files"]}
    assert "(found 7)" in next(f["detail"] for r in m["files"] for f in r["flags"] if f["check"] == "impossible_values")
    assert flags["test/none/bad.npy"] == {"impossible_values"}
    assert flags["train/none/off.npy"] == {"no_dies"}
    assert flags["train/Center/empty.npy"] == {"empty_labelled"}
    assert flags["train/none/clean.npy"] == set()
    assert flags["test/Center/m1.npy"] == {"leakage", "duplicate"} and flags["train/Center/m1.npy"] == set()
    assert flags["train/Center/m0.npy"] == {"label_conflict"}
    assert flags["train/none/m0.npy"] == {"label_conflict", "duplicate"}
    assert m["summary"]["grid_sizes"] == {"26×26": 7, "30×30": 1, "32×32": 1}
    assert m["summary"]["kept"] == 4  # train/Center/m1..m3 and train/none/clean


def test_kind_detection_tells_map_pngs_from_binarised_images(tmp_path: Path) -> None:
    from PIL import Image

    for name, arr in (("maps", _map((26, 26), 9, 0)), ("binary", (_map((26, 26), 9, 0) > 0).astype(np.uint8) * 255)):
        (tmp_path / name / "c").mkdir(parents=True)
        Image.fromarray(arr).save(tmp_path / name / "c" / "x.png")
    assert detect_kind([tmp_path / "maps"]) == "maps" and detect_kind([tmp_path / "binary"]) == "images"


def test_wafer_maps_from_a_klarf_file(shared: Path) -> None:
    m = curate_maps([shared / "fixtures" / "klarf" / "QUU_NUU.000"])
    assert m["summary"]["files"] == 3 and all(r["dies"] > 0 for r in m["files"])
    assert sum(m["summary"]["grid_sizes"].values()) == 3
    cli = _cli(str(shared / "fixtures" / "klarf" / "QUU_NUU.000"))
    assert cli.returncode == 0 and cli.stdout.startswith("3 maps: 3 kept, 0 dropped"), cli.stdout  # not "3 files"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "FABSIGHT_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "fabsight", "curate", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_writes_manifest_clean_tree_and_contact_sheet(planted: tuple[Path, dict, dict], tmp_path: Path) -> None:
    root, truth, _ = planted
    clean, sheet, man = tmp_path / "clean", tmp_path / "sheet.html", tmp_path / "m.json"
    r = _cli(str(root), "--json", "--out", str(clean), "--link", "--html", str(sheet), "--manifest", str(man))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    manifest = json.loads(man.read_text())
    assert "files" not in out and out["summary"] == manifest["summary"]
    written = {str(p.relative_to(clean)) for p in clean.rglob("*") if p.is_symlink()}
    kept = {str(Path(r["path"]).relative_to(root)) for r in manifest["files"] if r["keep"]}
    assert written == kept and not written & set(truth["blurry"] + truth["unreadable"] + truth["near"])
    html = sheet.read_text()
    assert html.count("<section>") == len(manifest["groups"]) and "data:image/png;base64," in html
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers from the atomic writes


def test_cli_user_mistakes_are_one_line_exit_2(planted: tuple[Path, dict, dict], tmp_path: Path) -> None:
    root = planted[0]
    r = _cli(str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    with pytest.raises(FabsightError, match="inside"):
        write_clean_tree(planted[2], root / "train" / "clean")


def test_planted_problems_on_real_magnetic_tiles(shared: Path, tmp_path: Path) -> None:
    base = tmp_path / "mt"
    for cls, names in (("Fray", slice(0, 20)), ("Uneven", slice(0, 20))):
        (base / cls).mkdir(parents=True)
        for p in sorted((shared / "data" / "magnetic_tile" / f"MT_{cls}" / "Imgs").glob("*.jpg"))[names]:
            os.symlink(p, base / cls / p.name)
    truth = plant(base, tmp_path / "planted", n=2, seed=0)
    m = curate_images([tmp_path / "planted"], options=CurateOptions())
    root = tmp_path / "planted"
    for check in ("unreadable", "leakage", "label_conflict", "blank"):
        assert set(truth[check]) <= _flagged(m, root, check), check
    assert set(truth["exact"] + truth["near"]) <= _flagged(m, root, "duplicate")
    assert set(truth["blurry"]) <= _flagged(m, root, "blurry")


def test_embedding_checks_find_near_copies_and_foreign_images(tmp_path: Path) -> None:
    import cv2

    base = textured_folder(tmp_path / "base", per_class=12, size=80, seed=3)
    yy, xx = np.mgrid[:80, :80]
    cv2.imwrite(str(tmp_path / "checker.png"), ((yy // 4 + xx // 4) % 2 * 255).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "label.png"), cv2.putText(np.full((80, 80, 3), (30, 160, 230), np.uint8), "ABC",
                                                         (5, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3))
    root = tmp_path / "planted"
    truth = plant(base, root, n=2, seed=1, foreign=[tmp_path / "checker.png", tmp_path / "label.png"])
    src = sorted((root / "train" / "a").glob("a_*.png"))[0]
    brighter = np.clip(cv2.imread(str(src), cv2.IMREAD_GRAYSCALE).astype(int) + 6, 0, 255).astype(np.uint8)
    cv2.imwrite(str(src.with_name("bright_" + src.name)), brighter)
    no_phash = CurateOptions(phash_distance=None)  # near copies must come from the embeddings
    m = curate_images([root], options=no_phash, backbone="efficientnet_lite0", input_size=96)
    near = next(g for g in m["groups"] if g["kind"] == "near_embedding")
    assert {str(src), str(src.with_name("bright_" + src.name))} <= set(near["members"])
    assert sum(r["keep"] for r in m["files"] if r["path"] in near["members"]) == 1
    score = {str(Path(r["path"]).relative_to(root)): r["outlier_score"] for r in m["files"] if "outlier_score" in r}
    assert set(truth["outlier"]) <= _flagged(m, root, "outlier")
    assert not set(truth["blank"]) & set(score)  # blank frames are dropped as blank, not scored
    foreign = set(truth["outlier"])
    assert min(v for k, v in score.items() if k in foreign) > max(v for k, v in score.items() if k not in foreign)
    assert m["thresholds"]["outlier"]["threshold"] > m["thresholds"]["outlier"]["median"]


@pytest.mark.parametrize("base_set", ["magnetic_tile", "deeppcb"])
def test_foreign_real_images_planted_in_a_real_set_are_outliers(shared: Path, tmp_path: Path, base_set: str) -> None:
    """Another product's pictures among real ones are found at the default k = 3 (the log-space rule found none)."""
    data = shared / "data"
    tiles = {c: sorted((data / "magnetic_tile" / f"MT_{c}" / "Imgs").glob("*.jpg")) for c in ("Free", "Blowhole")}
    boards = {g: sorted((data / "deeppcb").glob(f"group{g}/{g}/*_test.jpg")) for g in ("00041", "12000")}
    base_classes, other = (tiles, boards) if base_set == "magnetic_tile" else (boards, tiles)
    root = tmp_path / "set"
    for cls, files in base_classes.items():
        (root / cls).mkdir(parents=True)
        for p in files[:24]:
            os.symlink(p, root / cls / p.name)
    foreign = [p for files in other.values() for p in (files[0], files[-1])]  # four different tiles / boards
    for k, p in enumerate(foreign):
        os.symlink(p, root / sorted(base_classes)[k % 2] / f"foreign_{k}{p.suffix}")
    m = curate_images([root], backbone="efficientnet_lite0", input_size=112)
    found = _flagged(m, root, "outlier")
    planted = {f"{sorted(base_classes)[k % 2]}/foreign_{k}.jpg" for k in range(4)}
    assert planted <= found
    assert len(found - planted) <= 1, found - planted  # measured: one real tile under an odd exposure, no board
    assert m["thresholds"]["outlier"]["space"] == "linear"


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    """The curation scan honours the readers' pixel limit (fabsight.io.limits), read from the header."""
    import cv2

    from fabsight.curate.features import read_record

    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.full((300, 400), 128, np.uint8))
    assert read_record(path).error is None
    monkeypatch.setenv("FABSIGHT_MAX_IMAGE_PIXELS", "100000")
    rec = read_record(path)
    assert rec.error == "image of 400 × 300 pixels, over the limit of 100000 (FABSIGHT_MAX_IMAGE_PIXELS)"
    assert rec.thumb is None
