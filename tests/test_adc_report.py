"""The HTML report of a classified lot (``fabsight adc ... --report``): real DeepPCB crops, one file."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import torch

from adckit import klarf18, row18
from clikit import run_cli
from fabsight.adc.report import THUMBS_PER_CLASS, relabel
from fabsight.io.klarf import read_klarf

torch.set_num_threads(1)


def test_report_is_self_contained_with_pareto_maps_and_thumbnails(adc_die_model, tmp_path, capsys):
    model, test = adc_die_model
    crops = [p for c in sorted(test) for p in test[c][:3]]
    for p in crops:
        shutil.copy(p, tmp_path / p.name)
    src = klarf18(tmp_path / "lot.klarf", [row18(i + 1, 0, [(p.name, 1)]) for i, p in enumerate(crops)]
                  + [row18(len(crops) + 1, 7, [])])
    out, report = tmp_path / "out.klarf", tmp_path / "lot.html"
    code, stdout, stderr = run_cli(["adc", src, "--model", model.dir, "--out", out, "--report", report, "--json",
                                    "--device", "cpu"], capsys)
    assert code == 0, stderr
    got = json.loads(stdout)
    assert got["report"] == str(report)
    html = report.read_text()
    assert not re.search(r'src="(?!data:image/png;base64,)', html)  # every picture inline: no CDN, no files
    assert html.count('alt="Pareto of defect classes"') == 1
    assert html.count("coloured by class") == 1  # one wafer: one map
    lot = got["counts"]["lot"]
    for name in lot["classes"]:  # confidently classified classes: each has a gallery heading
        assert re.search(rf"<h3>{re.escape(name)} · \d+ defects", html)
    per_class = Counter(d["class_name"] for d in got["defects"] if d["images"])
    shown = sum(min(THUMBS_PER_CLASS, n) for n in per_class.values())  # the first few of each class
    assert len(re.findall(r'class="thumb(?: review)?"', html)) == shown and 0 < shown <= len(crops)
    review = Counter(d["class_name"] for d in got["defects"] if d["needs_review"])
    assert html.count('class="thumb review"') <= sum(review.values()) == lot["needs_review"]
    assert f"{lot['defects']} defects" in html and f"{lot['no_image']} without images" in html


def test_relabel_lays_decisions_over_the_classified_maps(adc_die_model, tmp_path):
    """A reviewer's class replaces the written one; a class the lookup lacks gets the next number and a name."""
    src = klarf18(tmp_path / "lot.klarf", [row18(1, 7, []), row18(2, 7, []), row18(3, 0, [])])
    maps = read_klarf(src)
    relabel(maps, {("W01", 2): "Open", ("W01", 3): "scratch"}, {"Open": 7})
    assert maps[0].defects.class_number.tolist() == [7, 7, 8]
    assert maps[0].extras["class_names"][8] == "scratch" and maps[0].extras["class_names"][7] == "Open"
