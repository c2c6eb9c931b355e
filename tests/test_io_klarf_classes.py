"""Locating KLARF defects' classes and images in the text, and patching only those."""

from __future__ import annotations

import numpy as np
import pytest

from fabsight.errors import FormatError
from fabsight.io.klarf import read_klarf
from fabsight.io.klarf_classes import ImageRef, locate_classes

GOOD = ["LAA_FAA_LAA-01.000", "QUU_NUU.000", "klarf12DefectListExample.klarf", "klarf12Example.klarf",
        "klarfWithImagelist.klarf", "klarf_no_defect.000", "simple12.klarf", "simple18.klarf",
        "wierdKlarfWithNAs.klarf"]


@pytest.mark.parametrize("name", GOOD)
def test_real_klarfs_locate_every_defect_and_patch_only_classes(shared, tmp_path, name):
    src = shared / "fixtures" / "klarf" / name
    doc = locate_classes(src)
    maps = read_klarf(src)
    assert [d.defect_id for d in doc.defects] == [int(i) for m in maps for i in m.defects.defect_id]
    assert doc.patched([None] * len(doc.defects), {}) == src.read_bytes()  # nothing asked: the same bytes
    numbers = [i % 3 + 40 for i in range(len(doc.defects))]
    out = tmp_path / name
    out.write_bytes(doc.patched(numbers, {40: "a", 41: "b", 42: "c"}))
    back = read_klarf(out)
    assert [int(c) for m in back for c in m.defects.class_number] == numbers
    for before, after in zip(maps, back, strict=True):
        assert np.array_equal(before.grid, after.grid)
        assert {40: "a", 41: "b", 42: "c"}.items() <= after.extras["class_names"].items()
        assert before.extras["class_names"].items() <= after.extras["class_names"].items()


def test_the_tiff_switching_fixture_gives_pages_of_the_current_tiff(shared):
    doc = locate_classes(shared / "fixtures" / "klarf" / "klarf12DefectListExample.klarf")
    by_id = {d.defect_id: d.images for d in doc.defects}
    assert by_id[1] == (ImageRef("A_1.jpg", 1),) and by_id[4] == (ImageRef("A2.jpg", 1),)
    assert by_id[9] == (ImageRef("A_5.jpg", 39),)  # no TiffFileName before the 4th list: still A_5.jpg
    assert by_id[11] == tuple(ImageRef("multi-image.tif", k) for k in range(1, 8))
    assert by_id[12] == tuple(ImageRef("multi-image.tif", k) for k in range(8, 15))


def test_a_missing_classnumber_column_is_added_in_both_syntaxes(tmp_path):
    k12 = tmp_path / "a.000"
    k12.write_text("FileVersion 1 2;\nDiePitch 10 10;\nWaferID \"W\";\n"
                   "DefectRecordSpec 5 DEFECTID XINDEX YINDEX IMAGECOUNT IMAGELIST;\n"
                   "DefectList\n 1 0 0 1 1 1 0\n 2 0 1 0 0;\nEndOfFile;\n", encoding="utf-8")
    k18 = tmp_path / "b.klarf"
    k18.write_text('Record FileRecord "1.8"\n{\n  Record LotRecord "L"\n  {\n    Field DiePitch 2 {10, 10}\n'
                   '    Record WaferRecord "W"\n    {\n      List DefectList\n      {\n'
                   '        Columns 4 { int32 DEFECTID, int32 XINDEX, int32 YINDEX, ImageList IMAGEINFO }\n'
                   '        Data 2\n        {\n          1 0 0 N;\n          2 0 1 Images 1 { "x.png" "PNG" 1 "P" };\n'
                   '        }\n      }\n    }\n  }\n}\nEndOfFile;\n', encoding="utf-8")
    for src in (k12, k18):
        doc = locate_classes(src)
        assert [d.class_number for d in doc.defects] == [None, None]
        out = tmp_path / f"out{src.suffix}"
        out.write_bytes(doc.patched([None, 5], {5: "scratch"}))
        back = read_klarf(out)[0]
        assert back.defects.class_number.tolist() == [0, 5] and back.extras["class_names"] == {5: "scratch"}
        assert [d.images for d in locate_classes(out).defects] == [d.images for d in doc.defects]


def test_a_list_whose_count_disagrees_with_its_rows_is_refused(tmp_path):
    src = tmp_path / "c.klarf"
    src.write_text('Record FileRecord "1.8"\n{\n  Record LotRecord "L"\n  {\n    Field DiePitch 2 {10, 10}\n'
                   '    Record WaferRecord "W"\n    {\n      List DefectList\n      {\n'
                   '        Columns 3 { int32 DEFECTID, int32 XINDEX, int32 YINDEX }\n'
                   '        Data 3\n        {\n          1 0 0;\n          2 0 1;\n'
                   '        }\n      }\n    }\n  }\n}\nEndOfFile;\n', encoding="utf-8")
    with pytest.raises(FormatError, match="List DefectList declares 3 rows but holds 2"):
        locate_classes(src)
