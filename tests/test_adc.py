"""ADC: KLARF defects classified from real DeepPCB review crops, written back in place."""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from adckit import klarf18, row18
from fabsight.adc import classify_klarf, write_classified
from fabsight.errors import FabsightError
from fabsight.io.klarf import read_klarf
from fabsight.io.klarf_classes import locate_classes

torch.set_num_threads(1)


def _only_classes_changed(src: Path, dst: Path, names: list[str]) -> None:
    """Read back: every field but the class numbers and lookup is the input's, and the raw text
    differs only in the class values and added lookup lines."""
    a, b = read_klarf(src), read_klarf(dst)
    assert len(a) == len(b)
    for wa, wb in zip(a, b, strict=True):
        assert np.array_equal(wa.grid, wb.grid) and np.array_equal(wa.counts, wb.counts)
        for name in ("defect_id", "x", "y", "xrel", "yrel", "xindex", "yindex", "size"):
            assert np.array_equal(getattr(wa.defects, name), getattr(wb.defects, name), equal_nan=True), name
        assert set(wa.defects.extra) == set(wb.defects.extra)
        for k, v in wa.defects.extra.items():
            assert np.array_equal(v, wb.defects.extra[k], equal_nan=v.dtype != object), k
        assert {k: v for k, v in wa.extras.items() if k != "class_names"} == \
               {k: v for k, v in wb.extras.items() if k != "class_names"}
        for number, name in wa.extras["class_names"].items():
            assert wb.extras["class_names"][number] == name  # existing names kept
    out_doc = locate_classes(dst)
    restored = bytearray(dst.read_bytes())
    for (start, end), d in sorted(zip(out_doc.slots, locate_classes(src).defects, strict=True), reverse=True):
        restored[start:end] = str(d.class_number).encode()
    diff = [ln for ln in difflib.ndiff(src.read_text().splitlines(), restored.decode().splitlines())
            if ln[:2] in ("+ ", "- ")]
    header = ("Data ", "ClassLookup ")  # the lookup's row count changes with it
    added = [ln for ln in diff if not any(h in ln for h in header)]
    assert all(ln.startswith("+ ") and any(f'"{n}"' in ln for n in names) for ln in added), diff
    counts = [ln for ln in diff if ln not in added]
    assert len(counts) <= 2 and all(ln.startswith("+ ") for ln in counts[1:]), diff  # one count line at most


def test_klarf18_defects_classified_and_written_back_in_place(adc_die_model, tmp_path):
    model, test = adc_die_model
    classes = [c for c in test if test[c]]
    one, two = test[classes[0]][0], test[classes[1]][0]
    img = tmp_path / "img"
    img.mkdir()
    for p in (one, two):
        shutil.copy(p, img / p.name)
    src = klarf18(tmp_path / "lot.klarf", [
        row18(1, 7, [(f"img/{one.name}", 1)]),
        row18(2, 7, []),
        row18(3, 0, [(f"img/{one.name}", 1), (f"img/{two.name}", 1)]),
    ])
    result = classify_klarf(src, model)
    rows = result.rows
    single = model.predict([one], top_k=len(model.classes))[0]
    assert rows[0].class_name == single["label"] and rows[0].confidence == pytest.approx(single["confidence"])
    assert rows[0].images == [str(img / one.name)]
    assert rows[1].reason == "no_image" and rows[1].class_number == 7  # kept, counted
    both = model.predict([one, two], top_k=len(model.classes))
    mean = {c: np.mean([next(t["p"] for t in d["top"] if t["label"] == c) for d in both]) for c in model.classes}
    assert rows[2].class_name == max(mean, key=mean.get) and rows[2].confidence == pytest.approx(max(mean.values()))
    for r in rows:
        if r.reason != "no_image":
            assert r.class_number == (0 if r.needs_review else result.class_numbers[r.class_name])
    counts = result.counts()
    assert counts["lot"]["defects"] == 3 and counts["lot"]["no_image"] == 1
    assert counts["wafers"]["W01"]["needs_review"] + sum(counts["wafers"]["W01"]["classes"].values()) == 2

    out = write_classified(result, tmp_path / "out.klarf")
    back = read_klarf(out)[0]
    assert back.defects.class_number.tolist() == [r.class_number for r in rows]
    names = back.extras["class_names"]
    assert all(names[n].lower() == c for c, n in result.class_numbers.items()) and names[0] == "Unclassified"
    assert result.class_numbers.get("open", 7) == 7  # the file's name for 7 ("Open") is reused
    _only_classes_changed(src, out, list(result.class_numbers))


def test_klarf12_tiff_pages_8_and_16_bit_and_a_new_lookup(adc_die_model, tmp_path):
    model, test = adc_die_model
    crops = [p for c in test for p in test[c][:1]][:3]
    pages = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in crops]
    cv2.imwritemulti(str(tmp_path / "review.tif"), pages)
    cv2.imwrite(str(tmp_path / "deep.tif"), pages[0].astype(np.uint16) * 257)
    src = tmp_path / "lot.000"
    src.write_text(
        "FileVersion 1 2;\nLotID \"L\";\nDiePitch 5000 5000;\nWaferID \"W7\";\nSampleCenterLocation 0 0;\n"
        "DefectRecordSpec 8 DEFECTID XREL YREL XINDEX YINDEX CLASSNUMBER IMAGECOUNT IMAGELIST;\n"
        "TiffFileName review.tif;\nDefectList\n 1 10 10 0 0 5 1 1 3 0\n 2 10 10 0 1 5 2 2 1 0 2 0;\n"
        "TiffFileName deep.tif;\nDefectList\n 3 10 10 1 1 1 1 1 1 0;\nSummarySpec 2 TESTNO NDEFECT;\n"
        "SummaryList 1 3;\nEndOfFile;\n", encoding="utf-8")
    result = classify_klarf(src, model)
    direct = model.predict([pages[2], pages[0]], top_k=len(model.classes))
    assert result.rows[0].class_name == direct[0]["label"] and result.rows[0].pages == [3]
    assert result.rows[0].confidence == pytest.approx(direct[0]["confidence"])
    assert result.rows[2].class_name == direct[1]["label"]  # the 16-bit page reads as its 8-bit twin
    out = write_classified(result, tmp_path / "out.000")
    back = read_klarf(out)[0]
    assert {n: c for c, n in result.class_numbers.items()}.items() <= back.extras["class_names"].items()
    assert back.defects.class_number.tolist() == [r.class_number for r in result.rows]
    _only_classes_changed(src, out, [*result.class_numbers, "Unclassified"])

    from fabsight.adc.history import klarf_image_folder
    from fabsight.die.data import read_image

    summary = klarf_image_folder([src], tmp_path / "history", classes={5: "five", 1: "one"})
    assert summary["defects_per_class"] == {"five": 2, "one": 1}
    written = sorted((tmp_path / "history" / "five").iterdir())  # TIFF pages become PNGs, pixel for pixel
    assert [read_image(p).tolist() for p in written] == [pages[2].tolist(), pages[0].tolist(), pages[1].tolist()]


def test_the_imagelist_fixture_with_its_images_in_place(shared, adc_die_model, tmp_path):
    model, test = adc_die_model
    src = tmp_path / "klarfWithImagelist.klarf"
    shutil.copy(shared / "fixtures" / "klarf" / "klarfWithImagelist.klarf", src)
    crop = next(p for c in test for p in test[c])
    for name in ("here", "there", "anywhere", "here2", "there2", "anywhere2"):
        (tmp_path / "a" / "path").mkdir(parents=True, exist_ok=True)
        shutil.copy(crop, tmp_path / "a" / "path" / name)  # a PNG named as the fixture names it
    with pytest.raises(FabsightError, match="not a review image type"):
        classify_klarf(src, model)  # no suffix: not taken for an image
    text = src.read_text().replace('/here"', '/here.png"').replace('/there"', '/there.png"')
    src.write_text(text.replace('/anywhere"', '/anywhere.png"').replace('2"', '2.png"'))
    for f in list((tmp_path / "a" / "path").iterdir()):
        f.rename(f.with_suffix(".png"))
    result = classify_klarf(src, model)
    assert [len(r.images) for r in result.rows] == [3, 0, 0, 3, 0, 0]
    out = write_classified(result, tmp_path / "out.klarf")
    _only_classes_changed(src, out, [*result.class_numbers, "Unclassified"])


@pytest.mark.parametrize(("ref", "message"), [
    ("img/missing.png", "wafer 'W01' defect 1: image 'img/missing.png' not found"),
    ("../outside.png", "defect 1: image '../outside.png' points outside the allowed folders"),
    ("/etc/passwd.png", "points outside the allowed folders"),
    ("img/pages.tif#9", "defect 1: .*pages.tif: image number 9 is out of range: the TIFF has 2 page"),
    ("img/broken.png", "defect 1: .*broken.png: "),
])
def test_bad_image_references_are_one_line_and_nothing_is_written(adc_die_model, tmp_path, ref, message):
    model, _ = adc_die_model
    (tmp_path / "img").mkdir()
    (tmp_path / "outside.png").write_bytes(b"")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cv2.imwritemulti(str(tmp_path / "img" / "pages.tif"), [np.zeros((8, 8), np.uint8)] * 2)
    file, _, page = ref.partition("#")
    src = klarf18(tmp_path / "lot.klarf", [row18(1, 0, [(file, int(page or 1))])])
    with pytest.raises(FabsightError, match=message) as info:
        classify_klarf(src, model)
    assert str(info.value).startswith(str(src)) and "\n" not in str(info.value)


def test_imagecount_disagreeing_with_the_list_and_a_model_of_another_task(adc_die_model, tmp_path):
    model, _ = adc_die_model
    src = tmp_path / "lot.000"
    src.write_text("FileVersion 1 2;\nDiePitch 5000 5000;\nWaferID \"W\";\n"
                   "DefectRecordSpec 7 DEFECTID XINDEX YINDEX CLASSNUMBER TEST IMAGECOUNT IMAGELIST;\n"
                   "DefectList\n 4 0 0 1 1 2 1 1 0;\nEndOfFile;\n", encoding="utf-8")
    with pytest.raises(FabsightError, match="wafer 'W' defect 4: IMAGECOUNT says 2 but IMAGELIST lists 1"):
        classify_klarf(src, model)
    other = tmp_path / "other"
    shutil.copytree(model.dir, other)
    card = json.loads((other / "card.json").read_text())
    (other / "card.json").write_text(json.dumps({**card, "task": "wafer-classifier"}))
    good = klarf18(tmp_path / "ok.klarf", [row18(1, 0, [])])
    with pytest.raises(FabsightError, match="is a 'wafer-classifier' model, expected 'die-classifier'"):
        classify_klarf(good, other)


def test_cli_json_rows_and_one_line_errors(adc_die_model, tmp_path, monkeypatch, capsys):
    from fabsight.cli.main import main

    model, test = adc_die_model
    crop = next(p for c in test for p in test[c])
    pics = tmp_path / "pics"
    pics.mkdir()
    shutil.copy(crop, pics / "d1.png")
    (tmp_path / "k").mkdir()
    src = klarf18(tmp_path / "k" / "lot.klarf", [row18(1, 0, [("d1.png", 1)]), row18(2, 0, [])],
                   lookup=False)

    def cli(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.argv", ["fabsight", *args])
        with pytest.raises(SystemExit) as info:
            main()
        got = capsys.readouterr()
        return info.value.code or 0, got.out, got.err

    out = tmp_path / "out.klarf"
    code, stdout, stderr = cli("adc", str(src), "--model", str(model.dir), "--out", str(out), "--json",
                               "--device", "cpu")
    assert code == 2 and "defect 1: image 'd1.png' not found" in stderr and stderr.count("\n") == 1
    assert not out.exists()  # whole or not at all
    code, stdout, stderr = cli("adc", str(src), "--model", str(model.dir), "--out", str(out), "--json",
                               "--images", str(pics), "--review-code", "99", "--device", "cpu")
    assert code == 0, stderr
    got = json.loads(stdout)
    assert [d["defect_id"] for d in got["defects"]] == [1, 2] and got["defects"][0]["images"] == [str(pics / "d1.png")]
    assert set(got["defects"][0]) >= {"wafer", "class_name", "class_number", "confidence", "needs_review", "reason"}
    assert got["counts"]["wafers"]["W01"]["defects"] == 2
    names = read_klarf(out)[0].extras["class_names"]
    assert names[99] == "Unclassified" and all(names[n] == c for c, n in got["class_numbers"].items())


def _history_klarf(path: Path, crops: dict[str, list[Path]], numbers: dict[str, int], lookup: bool) -> Path:
    """A reviewed lot: each crop one defect, its manual class number, its image by absolute path."""
    rows = [row18(i + 1, numbers[c], [(str(p), 1)]) for i, (c, p) in enumerate(
        (c, p) for c in crops for p in crops[c])]
    rows.append(row18(len(rows) + 1, 0, []))  # unclassified, no image: left out
    klarf18(path, rows, lookup=False)
    if lookup:
        entries = "".join(f'        {n} "{c}" "";\n' for c, n in numbers.items())
        text = path.read_text().replace("  }\n}\nEndOfFile;", (
            "    List ClassLookupList\n    {\n"
            "      Columns 3 { int32 CLASSNUMBER, string CLASSNAME, string CLASSCODE }\n"
            f"      Data {len(numbers)}\n      {{\n{entries}      }}\n    }}\n  }}\n}}\nEndOfFile;"))
        path.write_text(text)
    return path


def test_die_train_and_eval_on_reviewed_klarfs(adc_die_model, shared, tmp_path, monkeypatch, capsys):
    from fabsight.cli.main import main

    _, test = adc_die_model
    train_dir = Path(adc_die_model[0].card.training["data"])
    classes = sorted(d.name for d in train_dir.iterdir())[:3]
    numbers = {c: 11 + i for i, c in enumerate(classes)}
    (tmp_path / "lot").mkdir()
    reviewed = {c: sorted((train_dir / c).iterdir())[:5] for c in classes}
    train_k = _history_klarf(tmp_path / "lot" / "train.klarf", reviewed, numbers, lookup=True)
    held = {c: test.get(c, [])[:6] for c in classes}
    test_k = _history_klarf(tmp_path / "lot" / "test.klarf", held, numbers, lookup=False)

    def cli(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.argv", ["fabsight", *args])
        with pytest.raises(SystemExit) as info:
            main()
        got = capsys.readouterr()
        return info.value.code or 0, got.out, got.err

    code, stdout, stderr = cli("die", "train", str(train_k), "--out", str(tmp_path / "m"), "--images", "/",
                               "--backbone", "efficientnet_lite0", "--input-size", "64", "--cv", "0",
                               "--device", "cpu", "--json")
    assert code == 0, stderr
    card = json.loads(stdout)
    assert card["classes"] == classes
    assert card["training"]["from_klarf"]["defects_per_class"] == {c: len(p) for c, p in reviewed.items()}
    assert card["training"]["from_klarf"]["left_out"] == {"no_image": 0, "unlabelled": 1}
    mapping = ",".join(f"{n}={c}" for c, n in numbers.items())
    code, stdout, stderr = cli("die", "eval", str(tmp_path / "m"), str(test_k), "--classes", mapping,
                               "--images", "/", "--json", "--device", "cpu")
    assert code == 0, stderr
    per_defect = json.loads(stdout)
    folder = tmp_path / "held"
    for c, paths in held.items():
        (folder / c).mkdir(parents=True)
        for p in paths:
            shutil.copy(p, folder / c / p.name)
    code, stdout, stderr = cli("die", "eval", str(tmp_path / "m"), str(folder), "--json", "--device", "cpu")
    by_folder = json.loads(stdout)
    assert per_defect["n"] == by_folder["n"] == sum(map(len, held.values()))
    assert per_defect["accuracy"] == by_folder["accuracy"] and per_defect["macro_f1"] == by_folder["macro_f1"]
    code, _, stderr = cli("die", "eval", str(tmp_path / "m"), str(test_k), "--images", "/", "--device", "cpu")
    assert code == 2 and "no defect has both images and a class the model knows" in stderr  # no names: no labels


def _lots(test: dict[str, list[Path]], tmp_path: Path) -> Path:
    """Two lot folders (a KLARF beside its images) and a KLARF whose image is missing."""
    crops = [p for c in test for p in test[c][:2]]
    lots = tmp_path / "lots"
    for name, batch in (("a", crops[:3]), ("b", crops[3:6])):
        (lots / name).mkdir(parents=True)
        for p in batch:
            shutil.copy(p, lots / name / p.name)
        klarf18(lots / name / "lot.klarf", [row18(i + 1, 0, [(p.name, 1)]) for i, p in enumerate(batch)])
    klarf18(lots / "broken.klarf", [row18(1, 0, [("gone.png", 1)])])
    return lots


def test_batch_adc_one_klarf_per_input_resumable(adc_die_model, tmp_path):
    from fabsight.scale.adc import run_adc_batch

    model, test = adc_die_model
    lots = _lots(test, tmp_path)
    out = tmp_path / "out"
    first = run_adc_batch([lots], out, model=model.dir)
    assert (first["inputs"], first["processed"], first["failed"], first["defects"]) == (3, 2, 1, 6)
    assert "defect 1: image 'gone.png' not found" in first["errors"][0]["error"]
    for name in ("a", "b"):
        expected = classify_klarf(lots / name / "lot.klarf", model)
        src = expected.source
        assert (out / name / "lot.klarf").read_bytes() == src.patched(expected.output_numbers(),
                                                                      expected.lookup_names())
    shutil.copy(next(lots.glob("a/*.png")), lots / "gone.png")  # the missing image arrives: that lot is redone
    again = run_adc_batch([lots], out, model=model.dir)
    assert (again["skipped_done"], again["processed"], again["failed"]) == (2, 1, 0)
    assert (out / "broken.klarf").is_file()


@pytest.mark.slow
def test_batch_adc_on_ray_writes_what_in_process_writes(adc_die_model, tmp_path, monkeypatch, capsys):
    from fabsight.cli.main import main
    from fabsight.scale.adc import run_adc_batch

    model, test = adc_die_model
    lots = _lots(test, tmp_path)
    shutil.copy(next(lots.glob("a/*.png")), lots / "gone.png")
    out = tmp_path / "out"
    run_adc_batch([lots], out, model=model.dir)
    monkeypatch.setattr("sys.argv", ["fabsight", "batch", str(lots), "--adc", str(model.dir), "--out",
                                     str(tmp_path / "ray"), "--ray", "local", "--workers", "1", "--json"])
    with pytest.raises(SystemExit) as info:
        main()
    got = capsys.readouterr()
    assert (info.value.code or 0) == 0, got.err
    summary = json.loads(got.out)
    assert summary["executor"] == "ray (local)" and summary["processed"] == 3
    for f in ("a/lot.klarf", "b/lot.klarf", "broken.klarf"):
        assert (tmp_path / "ray" / f).read_bytes() == (out / f).read_bytes()


@pytest.mark.slow
def test_onnx_runtime_classifies_as_torch_does(adc_die_model, tmp_path):
    from fabsight.deploy.export import export_onnx

    model, test = adc_die_model
    onnx_dir = tmp_path / "model"
    shutil.copytree(model.dir, onnx_dir)
    export_onnx(onnx_dir, sample=None, n_threads=1)
    crops = [p for c in test for p in test[c][:2]]
    for p in crops:
        shutil.copy(p, tmp_path / p.name)
    src = klarf18(tmp_path / "lot.klarf", [row18(i + 1, 0, [(p.name, 1)]) for i, p in enumerate(crops)])
    by_torch = classify_klarf(src, model).rows
    by_onnx = classify_klarf(src, onnx_dir, runtime="onnx").rows
    assert [r.class_name for r in by_onnx] == [r.class_name for r in by_torch]
    assert [r.confidence for r in by_onnx] == pytest.approx([r.confidence for r in by_torch], abs=1e-3)
