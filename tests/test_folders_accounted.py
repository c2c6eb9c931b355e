"""Every file of a folder accounted for: each command reads the good files of a folder holding
broken ones, reports every broken one (stderr lines, ``--json`` ``errors``), exits 2 only when
nothing was readable, and ``--strict`` stops at the first. ``batch`` gives undetectable files an
error row, and a manifest cut at any byte resumes to exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clikit import exit_code_of, run_cli
from fabsight.errors import FabsightError, FormatError
from fabsight.io import ReadLog, iter_maps, read_maps, write_folder, write_klarf, write_lswmd
from fabsight.scale import run_batch
from fabsight.synth import generate_dataset

#: The broken files of the ``lot`` fixture, in the order a folder is read (sorted names).
BAD = ["Center/bad.npy", "README.txt", "Scratch/notes.txt", "cut.000", "empty.stdf"]
FILES = 5  # readable: four .npy maps in Center/ and Scratch/, and a KLARF lot ...
GOOD = 6  # ... of two wafers


@pytest.fixture(scope="module")
def lot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Maps written by fabsight's own writers, beside a corrupt .npy, a README, a stray note in a
    class folder, a KLARF cut before its first ';' and an empty STDF; plus hidden files (not inputs)."""
    root = tmp_path_factory.mktemp("accounted") / "lot"
    write_folder(generate_dataset(2, classes=("Center", "Scratch"), shapes=((26, 26),), seed=3), root)
    write_klarf(generate_dataset(1, classes=("Edge-Ring", "none"), shapes=((30, 30),), seed=4), root / "lot.000")
    (root / "Center" / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "README.txt").write_text("lot notes\n")
    (root / "Scratch" / "notes.txt").write_text("reviewed by J.\n")
    (root / "cut.000").write_text('FileVersion 1 2;\nWaferID "W1"\n')
    (root / "empty.stdf").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.npy").write_bytes(b"junk")
    return root


@pytest.fixture(scope="module")
def labelled(lot: Path) -> Path:
    """Only the class folders of ``lot`` (labelled maps, a corrupt one and a stray note)."""
    root = lot.parent / "labelled"
    for name in ("Center", "Scratch"):
        shutil.copytree(lot / name, root / name)
    return root


@pytest.fixture(scope="module")
def model(wafer_models_dir: Path) -> Path:
    return wafer_models_dir / "wafer"


# ------------------------------------------------------------------------------------------ io
def test_iter_maps_reads_the_good_files_and_records_each_bad_one(lot: Path) -> None:
    log = ReadLog()
    maps = list(iter_maps([lot], log))
    assert len(maps) == GOOD and log.files_read == FILES
    assert [e.path for e in log.errors] == [str(lot / b) for b in BAD]
    assert all(isinstance(e, FormatError) for e in log.errors)
    problems = [e["error"] for e in log.to_json()]
    assert problems[0].startswith("not a readable .npy") and problems[1].startswith("unrecognised wafer data")
    assert problems[2].startswith("not a .png/.npy map") and "truncated" in problems[3]
    assert problems[4] == "empty file"
    with pytest.raises(FormatError, match=r"Center/bad\.npy: not a readable \.npy"):
        list(iter_maps([lot]))  # without a log (or strict) the first bad file raises
    with pytest.raises(FormatError, match=r"Center/bad\.npy"):
        read_maps(lot, log=ReadLog(strict=True))


def test_globs_missing_paths_and_nested_folders_are_accounted_for(lot: Path, tmp_path: Path) -> None:
    root = tmp_path / "maps"
    write_folder(generate_dataset(1, classes=("Center",), shapes=((20, 20),), seed=1), root)
    (root / "Center" / "deeper").mkdir()
    log = ReadLog()
    maps = list(iter_maps([root, tmp_path / "none*.npy", tmp_path / "missing.000", lot / "*.000"], log))
    assert len(maps) == 1 + 2  # the folder's map, lot.000's two wafers (cut.000 is the glob's other match)
    assert [e.path for e in log.errors] == [str(root / "Center" / "deeper"), str(tmp_path / "none*.npy"),
                                            str(tmp_path / "missing.000"), str(lot / "cut.000")]
    assert [e.message.split(" (")[0] for e in log.errors[:3]] == [
        "a folder inside a class folder is not read", "the pattern matches no files", "no such file or folder"]


def test_a_file_that_cannot_be_opened_is_reported(lot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No permission (or an I/O error) on one file of a share: that file is reported, the rest read."""
    import builtins

    import fabsight.io

    def guarded(path: object, *args: object, **kwargs: object) -> object:
        if Path(str(path)).name == "lot.000":
            raise PermissionError(13, "Permission denied")
        return builtins.open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(fabsight.io, "open", guarded, raising=False)  # detect_format's open only
    log = ReadLog()
    assert len(list(iter_maps([lot], log))) == GOOD - 2  # lot.000 held two wafers
    assert [(e.path, e.message) for e in log.errors if e.path.endswith("lot.000")] == [
        (str(lot / "lot.000"), "cannot be read (Permission denied)")]


def test_a_bug_is_never_taken_for_a_bad_file(lot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only FabsightError means 'this file is unreadable'; any other exception propagates."""
    import fabsight.io.folder as folder

    def broken(path: object, label: object = None) -> None:
        raise ZeroDivisionError("a reader bug")

    monkeypatch.setattr(folder, "read_npy", broken)
    with pytest.raises(ZeroDivisionError):
        list(iter_maps([lot], ReadLog()))


# ----------------------------------------------------------------------------------------- CLI
def _commands(lot: Path, labelled: Path, model: Path, out: Path) -> dict[str, tuple[list[object], list[Path], int,
                                                                                    object]]:
    """name → (arguments, the bad files it must report in order, how many files it reads, a check of --json)."""
    bad = [lot / b for b in BAD]
    bad_labelled = [labelled / "Center" / "bad.npy", labelled / "Scratch" / "notes.txt"]
    return {
        "info": (["info", lot], bad, FILES, lambda r: r["files"][0]["wafers"] == GOOD),
        "convert": (["convert", lot, "--to", "folder", "--out", out / "conv"], bad, FILES,
                    lambda r: r["wafers"] == GOOD == len(read_maps(out / "conv"))),
        "render": (["render", lot, "--out", out / "r.png"], bad, FILES, lambda r: r["maps"] == GOOD),
        "explain": (["explain", lot], bad, FILES, lambda r: len(r["results"]) == GOOD),
        "ask": (["ask", lot, "How many wafers does the file hold?"], bad, FILES,
                lambda r: r["data"]["count"] == GOOD),
        "compare": (["compare", lot / "Center", "--golden", lot / "Scratch"], [bad[2], bad[0]], 4,
                    lambda r: len(r["results"]) == 2),  # the golden maps are read first
        "drift": (["drift", lot / "Center", lot, "--permutations", 20, "--projections", 8], [bad[0], *bad],
                  2 + FILES, lambda r: (r["n_a"], r["n_b"]) == (2, GOOD)),
        "monitor": (["monitor", lot, "--baseline", 1, "--chart", "p", "--permutations", 20], bad, FILES,
                    lambda r: sum(x["wafers"] for x in r["lots"]) == GOOD),
        "export-sft": (["export-sft", labelled, "--out", out / "sft"], bad_labelled, 4, lambda r: r["maps"] == 4),
        "autolabel": (["autolabel", lot, "--model", model, "--out", out / "al"], bad, FILES,
                      lambda r: r["total"] == GOOD),
        "wafer predict": (["wafer", "predict", model, lot, "--threads", 1], bad, FILES,
                          lambda r: len(r["results"]) == GOOD),
        "wafer eval": (["wafer", "eval", model, lot, "--threads", 1], bad, FILES,
                       lambda r: (r["n"], r["n_unlabelled_skipped"]) == (4, 2)),
    }


COMMANDS = ["info", "convert", "render", "explain", "ask", "compare", "drift", "monitor", "export-sft",
            "autolabel", "wafer predict", "wafer eval"]


@pytest.mark.parametrize("name", COMMANDS)
def test_command_reads_the_good_files_and_reports_the_bad(
    name: str, lot: Path, labelled: Path, model: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, bad, read, check = _commands(lot, labelled, model, tmp_path)[name]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [e["file"] for e in result["errors"]] == [str(b) for b in bad]
    assert all(e["error"] for e in result["errors"])
    assert check(result)  # type: ignore[operator]
    for b in bad:  # on stderr: one line per file, then how many were left out
        assert f"error: {b}: " in err
    assert f"warning: {len(bad)} of {len(bad) + read} files could not be read and were left out" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", COMMANDS)
def test_strict_stops_at_the_first_unreadable_file(
    name: str, lot: Path, labelled: Path, model: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, bad, _, _ = _commands(lot, labelled, model, tmp_path)[name]
    code, out, err = run_cli([*args, "--strict"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {bad[0]}: ") and err.count("\n") == 1
    assert not [p for p in tmp_path.iterdir() if p.name in ("conv", "r.png", "sft", "al")]  # nothing written


@pytest.mark.parametrize("command", ["wafer train", "distill", "export"])
def test_strict_stops_before_training_or_exporting(
    command: str, lot: Path, model: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The commands too slow to run here in full read through the same ReadLog; --strict shows it."""
    args = {
        "wafer train": ["wafer", "train", lot, "--out", tmp_path / "m", "--epochs", 1],
        "distill": ["distill", model, "--unlabeled", lot, "--out", tmp_path / "m", "--epochs", 1],
        "export": ["export", model, "--onnx", "--sample", lot],
    }[command]
    card = (model / "card.json").read_bytes()
    code, out, err = run_cli([*args, "--strict"], capsys)
    assert code == 2 and out == "" and err.startswith(f"error: {lot / BAD[0]}: not a readable .npy")
    assert err.count("\n") == 1 and not (tmp_path / "m").exists() and (model / "card.json").read_bytes() == card


def test_human_output_lists_each_bad_file(lot: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["info", lot], capsys)
    assert code == 0 and f"{GOOD} wafer(s)" in out
    lines = err.strip().splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == [str(lot / b) for b in BAD]
    assert lines[-1] == (f"warning: {len(BAD)} of {len(BAD) + FILES} files could not be read and were left out "
                         "(--strict stops at the first)")


def test_nothing_readable_exits_2_naming_every_file(lot: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for b in ("README.txt", "cut.000", "empty.stdf"):
        shutil.copy(lot / b, only_bad / b)
    code, out, err = run_cli(["explain", only_bad, "--json"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"error: {only_bad / 'README.txt'}: unrecognised wafer data (not KLARF, STDF, G85, LSWMD pickle, "
        "MixedWM38 npz, PNG or NPY)",
        f"error: {only_bad / 'cut.000'}: " + err.splitlines()[1].split(": ", 2)[2],
        f"error: {only_bad / 'empty.stdf'}: empty file",
        f"error: {only_bad}: none of the inputs could be read (3 unreadable files)",
    ]
    code, _, err = run_cli(["render", only_bad / "empty.stdf", "--out", tmp_path / "x.png"], capsys)
    assert code == 2 and err == f"error: {only_bad / 'empty.stdf'}: empty file\n"  # one file: its own line


@pytest.mark.shared
def test_real_fixtures_beside_a_broken_real_file(shared: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fx = shared / "fixtures"
    for name in ("QUU_NUU.000", "bad12DefectList.klarf"):
        shutil.copy(fx / "klarf" / name, tmp_path / name)
    shutil.copy(fx / "stdf" / "lot2.stdf", tmp_path / "lot2.stdf")
    code, out, err = run_cli(["explain", tmp_path, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [r["wafer_id"] for r in result["results"]] == [m.wafer_id for m in read_maps(fx / "klarf" / "QUU_NUU.000")
                                                          + read_maps(fx / "stdf" / "lot2.stdf")]
    assert [e["file"] for e in result["errors"]] == [str(tmp_path / "bad12DefectList.klarf")]


# --------------------------------------------------------------------------------------- batch
def test_batch_gives_undetectable_files_an_error_row(lot: Path, model: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.parquet"
    code, stdout, err = run_cli(["batch", lot, "--model", model, "--out", out, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["inputs"] == FILES + len(BAD) and summary["rows"] == GOOD
    assert summary["failed"] == len(BAD) and summary["processed"] == FILES
    assert sorted(e["file"] for e in summary["errors"]) == sorted(str(lot / b) for b in BAD)
    logged = [json.loads(x) for x in (out / "_errors.jsonl").read_text().splitlines()]
    assert logged == summary["errors"]
    assert len(pd.read_parquet(out)) == GOOD
    for b in BAD:
        assert f"error: {lot / b}: " in err
    code, stdout, err = run_cli(["batch", lot, "--model", model, "--out", tmp_path / "s",
                             "--strict"], capsys)
    assert code == 2 and err == f"error: {lot / 'README.txt'}: unrecognised wafer data (not KLARF, STDF, G85, " \
                                "LSWMD pickle, MixedWM38 npz, PNG or NPY)\n"


@pytest.fixture(scope="module")
def batch_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve one-map files (grouped four to a part), an LSWMD pickle, a KLARF lot and a README."""
    root = tmp_path_factory.mktemp("resume")
    classes = ("Center", "Edge-Ring", "Scratch", "none")
    write_folder(generate_dataset(3, classes=classes, shapes=((28, 28),), seed=21), root / "maps")
    write_lswmd(generate_dataset(2, classes=classes, shapes=((28, 28),), seed=22), root / "lot.pkl")
    write_klarf(generate_dataset(1, classes=("Center", "Scratch"), shapes=((30, 30),), seed=23), root / "lot.000")
    (root / "README.txt").write_text("not wafer data")
    return root


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values(["source", "index"]).reset_index(drop=True)


def test_a_torn_manifest_resumes_to_the_uninterrupted_rows(batch_inputs: Path, model: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    first = run_batch([batch_inputs], full, model=model, batch_size=4)
    assert first["rows"] == 12 + 8 + 2 and first["failed"] == 1
    expected = _rows(full)
    manifest = (full / "_manifest.jsonl").read_bytes()
    lines = manifest.splitlines(keepends=True)
    assert len(lines) == 12 + 2  # one line per finished input; the README failed and is retried
    ends = np.cumsum([len(x) for x in lines])
    # nothing, mid-line, every line boundary (a commit cut between two of its lines), inside the last line
    cuts = sorted({0, 7, *ends[:-1].tolist(), int(ends[1] + 20), int(ends[7] + 3), len(manifest) - 5})
    assert len(cuts) == 18
    for cut in cuts:
        out = tmp_path / f"cut{cut}"
        shutil.copytree(full, out)
        (out / "_manifest.jsonl").write_bytes(manifest[:cut])
        again = run_batch([batch_inputs], out, model=model, batch_size=4)
        got = _rows(out)
        assert not got.duplicated(["source", "index"]).any(), cut
        assert got[["source", "index", "label", "truth", "wafer_id"]].equals(
            expected[["source", "index", "label", "truth", "wafer_id"]]), cut
        np.testing.assert_allclose(got["confidence"], expected["confidence"], atol=1e-5)
        assert again["failed"] == 1 and again["skipped_done"] + again["processed"] == 14
        assert (out / "_manifest.jsonl").read_text().endswith("\n")
        done = run_batch([batch_inputs], out, model=model, batch_size=4)  # the manifest is whole again
        assert (done["skipped_done"], done["rows"]) == (14, 0) and len(_rows(out)) == len(expected)


# ------------------------------------------------------------------------------- image folders
#: The broken images of ``dies``, in the order the folder is listed: a PNG and a JPEG cut in
#: half, a text file named .png, a zero-byte JPEG and a TIFF whose header is garbage.
BAD_IMAGES = ["a/cut.png", "a/notes.png", "b/cut.jpg", "b/empty.jpg", "b/scan.tif"]
IMAGES = 8  # readable: four per class
TINY = ["--backbone", "efficientnet_lite0", "--input-size", 32, "--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> None:
    """One thread is far faster than two on a shared, oversubscribed box (tiny networks here)."""
    import torch

    torch.set_num_threads(1)


def _die_image(kind: str, seed: int, side: int = 48) -> np.ndarray:
    """A grey die image: random bright dots (``a``) or bright columns (``b``) on a dark floor."""
    rng = np.random.default_rng(seed)
    img = np.full((side, side), 40, np.uint8)
    if kind == "a":
        img[rng.integers(0, side, 30), rng.integers(0, side, 30)] = 230
    else:
        img[:, rng.integers(0, side, 3)] = 230
    return img


def _break_images(folder: Path, good_png: Path, good_jpg: Path, names: list[str]) -> None:
    """Write the broken images named in ``names`` (by kind) into ``folder``."""
    import cv2

    makers = {
        "cut.png": lambda: good_png.read_bytes()[: good_png.stat().st_size // 2],
        "cut.jpg": lambda: good_jpg.read_bytes()[: good_jpg.stat().st_size // 2],
        "notes.png": lambda: b"reviewed by J.\n",
        "empty.jpg": lambda: b"",
        "scan.tif": lambda: cv2.imencode(".tif", np.zeros((8, 8), np.uint8))[1].tobytes()[:8] + b"\xff" * 40,
    }
    for name in names:
        (folder / name).write_bytes(makers[name]())


@pytest.fixture(scope="module")
def dies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ROOT/{a,b}``: four readable images per class (PNG and JPEG) and the five ``BAD_IMAGES``."""
    import cv2

    root = tmp_path_factory.mktemp("dies") / "dies"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(root / cls / f"{i}.{'png' if i % 2 else 'jpg'}"), _die_image(cls, i))
    for cls, names in (("a", ["cut.png", "notes.png"]), ("b", ["cut.jpg", "empty.jpg", "scan.tif"])):
        _break_images(root / cls, root / "a" / "1.png", root / "a" / "0.jpg", names)
    return root


@pytest.fixture(scope="module")
def mvtec(dies: Path) -> Path:
    """An MVTec layout of ``dies`` images: train/good (6 + 2 broken), test/good (2 + 1 broken),
    test/dots (2 + 1 broken, each with a mask)."""
    import cv2

    root = dies.parent / "mvtec"
    good, dots, gt = root / "train" / "good", root / "test" / "dots", root / "ground_truth" / "dots"
    for d in (good, root / "test" / "good", dots, gt):
        d.mkdir(parents=True)
    for i in range(8):
        cv2.imwrite(str((good if i < 6 else root / "test" / "good") / f"{i}.png"), _die_image("b", i))
    for i in range(2):
        img = _die_image("b", 10 + i)
        img[10:20, 10:20] = 255
        cv2.imwrite(str(dots / f"{i}.png"), img)
        mask = np.zeros_like(img)
        mask[10:20, 10:20] = 255
        cv2.imwrite(str(gt / f"{i}_mask.png"), mask)
    _break_images(good, good / "0.png", dies / "a" / "0.jpg", ["cut.jpg", "empty.jpg"])
    _break_images(root / "test" / "good", good / "0.png", dies / "a" / "0.jpg", ["notes.png"])
    _break_images(dots, good / "0.png", dies / "a" / "0.jpg", ["scan.tif"])
    return root


MVTEC_BAD = ["train/good/cut.jpg", "train/good/empty.jpg", "test/dots/scan.tif", "test/good/notes.png"]


@pytest.fixture(scope="module")
def die_model(dies: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fabsight.die.model import train

    out = tmp_path_factory.mktemp("die-model") / "model"
    train(dies, out, backbone="efficientnet_lite0", input_size=32, cv_folds=0, log=ReadLog())
    return out


@pytest.fixture(scope="module")
def anomaly_model(mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("anomaly-model") / "model"
    assert exit_code_of(["anomaly", "fit", mvtec, "--out", out, "--input-size", "64", "--max-bank", "200",
                         "--holdout", "0.3", "--device", "cpu", "--no-eval"]) == 0
    return out


def _image_commands(dies: Path, mvtec: Path, die_model: Path, anomaly_model: Path, out: Path,
                    ) -> dict[str, tuple[list[object], list[Path], int, object]]:
    """name → (arguments, the bad files it must report in order, how many it reads, a check of --json)."""
    bad = [dies / b for b in BAD_IMAGES]
    test_bad = [mvtec / b for b in MVTEC_BAD[2:]]
    return {
        "die train": (["die", "train", dies, "--out", out / "m", "--cv", 0, *TINY], bad, IMAGES,
                      lambda r: r["training"]["n_images"] == IMAGES),
        "die eval": (["die", "eval", die_model, dies, "--device", "cpu"], bad, IMAGES, lambda r: r["n"] == IMAGES),
        "die predict": (["die", "predict", die_model, dies, "--device", "cpu"], bad, IMAGES,
                        lambda r: [x["path"] for x in r["results"]] == [str(p) for p in sorted(dies.rglob("[0-9].*"))]),
        "die discover": (["die", "discover", dies, "--max-k", 3, *TINY], bad, IMAGES,
                         lambda r: r["n_images"] == IMAGES),
        "die adapt": (["die", "adapt", dies, "--out", out / "bb", "--epochs", 1, "--batch-size", 4,
                       "--local-crops", 0, "--workers", 0, *TINY], bad, IMAGES, lambda r: r["n_images"] == IMAGES),
        "anomaly fit": (["anomaly", "fit", mvtec, "--out", out / "am", "--input-size", 64, "--max-bank", 200,
                         "--holdout", 0.3, "--device", "cpu"], [mvtec / b for b in MVTEC_BAD], 6 + 6,
                        lambda r: r["n_train_images"] == 4 and r["metrics"]["test"]["n_images"] == 4),
        "anomaly eval": (["anomaly", "eval", anomaly_model, mvtec, "--device", "cpu"], test_bad, 4 + 2,
                         lambda r: (r["n_images"], r["n_anomalous"], r["n_with_masks"]) == (4, 2, 2)),
        "anomaly predict": (["anomaly", "predict", anomaly_model, mvtec / "test", "--out", out / "pred"], test_bad, 4,
                            lambda r: r["n_images"] == 4
                            and json.loads((out / "pred" / "predictions.json").read_text())["errors"] == r["errors"]),
    }


IMAGE_COMMANDS = ["die train", "die eval", "die predict", "die discover", "die adapt", "anomaly fit", "anomaly eval",
                  "anomaly predict"]


def test_check_image_refuses_exactly_what_read_image_refuses(dies: Path) -> None:
    from fabsight.die.data import check_image, read_image, readable_images

    for path in sorted(p for p in dies.rglob("*") if p.is_file()):
        try:
            read_image(path)
        except FabsightError as exc:
            with pytest.raises(FabsightError) as checked:
                check_image(path)
            assert str(checked.value) == str(exc)
        else:
            check_image(path)
    log = ReadLog()
    assert len(readable_images(sorted(dies.rglob("*.*")), log)) == IMAGES and log.files_read == IMAGES
    assert [e.path for e in log.errors] == [str(dies / b) for b in BAD_IMAGES]
    assert [e.message for e in log.errors[2:4]] == [
        "cannot be decoded: not a readable image (corrupt or unsupported format)", "empty file"]


@pytest.mark.parametrize("name", IMAGE_COMMANDS)
def test_image_command_reads_the_good_images_and_reports_the_bad(
    name: str, dies: Path, mvtec: Path, die_model: Path, anomaly_model: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, bad, read, check = _image_commands(dies, mvtec, die_model, anomaly_model, tmp_path)[name]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [e["file"] for e in result["errors"]] == [str(b) for b in bad]
    assert check(result)  # type: ignore[operator]
    for b in bad:
        assert f"error: {b}: " in err
    assert f"warning: {len(bad)} of {len(bad) + read} files could not be read and were left out" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", IMAGE_COMMANDS)
def test_image_command_strict_stops_at_the_first_unreadable_image(
    name: str, dies: Path, mvtec: Path, die_model: Path, anomaly_model: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, bad, _, _ = _image_commands(dies, mvtec, die_model, anomaly_model, tmp_path)[name]
    code, out, err = run_cli([*args, "--strict"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {bad[0]}: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no model, backbone or prediction written


def test_export_sample_of_images_accounts_for_each(dies: Path, die_model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The export gets the readable images only (the ONNX export itself is tested in test_deploy_models)."""
    import fabsight.deploy

    model = tmp_path / "model"
    shutil.copytree(die_model, model)
    code, out, err = run_cli(["export", model, "--onnx", "--sample", dies, "--strict"], capsys)
    assert code == 2 and err.startswith(f"error: {dies / BAD_IMAGES[0]}: ") and err.count("\n") == 1
    assert not list(model.glob("*.onnx"))
    given: list[object] = []
    monkeypatch.setattr(fabsight.deploy, "export_onnx", lambda *a, sample, **k: given.append(sample) or {"n": 1})
    code, out, err = run_cli(["export", model, "--onnx", "--sample", dies, "--json"], capsys)
    assert code == 0, err
    assert given == [sorted(dies.rglob("[0-9].*"))]
    assert [e["file"] for e in json.loads(out)["errors"]] == [str(dies / b) for b in BAD_IMAGES]
    assert f"warning: {len(BAD_IMAGES)} of {len(BAD_IMAGES) + IMAGES} files could not be read" in err


def test_no_readable_image_exits_2_naming_every_file(dies: Path, die_model: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for b in BAD_IMAGES[2:]:
        shutil.copy(dies / b, only_bad / Path(b).name)
    code, out, err = run_cli(["die", "predict", die_model, only_bad, "--json"], capsys)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == [str(only_bad / Path(b).name) for b in BAD_IMAGES[2:]]
    assert lines[-1] == "error: none of the inputs could be read (3 unreadable files)"
    # a class whose every image is unreadable: each file named, then why training stopped
    labelled = tmp_path / "labelled"
    shutil.copytree(dies / "a", labelled / "a")
    shutil.copytree(only_bad, labelled / "b")
    code, out, err = run_cli(["die", "train", labelled, "--out", tmp_path / "m", *TINY], capsys)
    assert code == 2 and not (tmp_path / "m").exists()
    assert err.splitlines()[-1] == (f"error: {labelled / 'b'}: has 0 readable images (3 could not be read); "
                                    "need at least 1")
    assert len(err.splitlines()) == 1 + 2 + 3  # a's two broken images, b's three, the reason


def test_demo_uploads_the_good_files_and_reports_the_bad(lot: Path, wafer_models_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = ["demo", lot, "--models", wafer_models_dir, "--out", tmp_path / "demo"]
    code, out, err = run_cli([*args, "--strict"], capsys)
    assert code == 2 and err.startswith(f"error: {lot / BAD[0]}: ") and err.count("\n") == 1
    assert not (tmp_path / "demo").exists()
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [e["file"] for e in result["errors"]] == [str(lot / b) for b in BAD]
    assert result["wafers"] == GOOD
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["errors"] == result["errors"]
    assert f"warning: {len(BAD)} of {len(BAD) + FILES} files could not be read" in err


@pytest.mark.shared
def test_real_magnetic_tile_images_beside_broken_copies(shared: Path, tmp_path: Path) -> None:
    from fabsight.die.data import expand_inputs

    real = sorted((shared / "data" / "magnetic_tile" / "MT_Blowhole" / "Imgs").glob("*.jpg"))[:3]
    for p in real:
        shutil.copy(p, tmp_path / p.name)
    cut = tmp_path / "zz_cut.jpg"
    cut.write_bytes(real[0].read_bytes()[: real[0].stat().st_size // 3])
    log = ReadLog()
    assert expand_inputs([tmp_path], log) == [tmp_path / p.name for p in real]
    assert [e.path for e in log.errors] == [str(cut)] and log.files_read == 3
