"""SFT export: LLaVA / Cosmos-cookbook conversation layout, answers that match the labels, atomic output."""

from __future__ import annotations

import json
import re

import pytest

from fabsight.assist.compare import build_baseline
from fabsight.assist.knowledge import load_kb
from fabsight.assist.sft import export_sft
from fabsight.errors import FabsightError
from fabsight.synth import generate_dataset
from fabsight.types import WaferMap


@pytest.fixture(scope="module")
def maps() -> list[WaferMap]:
    return generate_dataset(1, shapes=((32, 32),), seed=2) + generate_dataset(
        1, classes=("Center+Loc",), shapes=((32, 32),), seed=3)


def test_layout_and_answers(maps, tmp_path) -> None:
    golden = generate_dataset(3, classes=("none",), shapes=((32, 32),), seed=9)
    summary = export_sft(maps, tmp_path / "sft", load_kb(), golden=(golden[0], build_baseline(golden)), size=64)
    entries = json.loads((tmp_path / "sft" / "annotations.json").read_text())
    assert summary["conversations"] == len(entries) == 5 * len(maps)
    assert summary["by_kind"] == dict.fromkeys(["multi", "yes", "no", "describe", "golden"], len(maps))
    assert len({e["id"] for e in entries}) == len(entries)
    for e in entries:
        assert set(e) == {"id", "image", "conversations"}
        human, gpt = e["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n") and gpt["from"] == "gpt"
        assert (tmp_path / "sft" / e["image"]).read_bytes().startswith(b"\x89PNG")
    by_id = {e["id"]: e["conversations"] for e in entries}
    classes = summary["classes"]
    for i, m in enumerate(maps):
        multi = by_id[f"{i:06d}-multi"][1]["value"]
        chosen = [classes[int(k) - 1] for k in re.findall(r"\((\d+)\)", multi)]
        assert chosen == list(m.labels)
        assert by_id[f"{i:06d}-yes"][1]["value"].startswith("Yes")
        no_q, no_a = by_id[f"{i:06d}-no"]
        asked = re.search(r"defect pattern (\S+)\?", no_q["value"]).group(1)
        assert asked not in m.labels and no_a["value"].startswith("No")
        describe = by_id[f"{i:06d}-describe"][1]["value"]
        assert "classifier" not in describe
        if m.labels == ("Edge-Ring",):
            assert "edge zone" in describe and "edge-bead" in describe.lower()
        if m.labels == ("none",):
            assert describe.startswith("The wafer map shows no defect pattern")
    assert by_id["000001-golden"][1]["value"].startswith(f"Wafer {maps[1].wafer_id} differs from a baseline of 3")


def test_unlabelled_maps_are_refused_and_old_output_kept(maps, tmp_path) -> None:
    out = tmp_path / "sft"
    export_sft(maps[:1], out, load_kb(), size=32)
    before = (out / "annotations.json").read_text()
    with pytest.raises(FabsightError, match="1 maps have no label"):
        export_sft([maps[0], WaferMap(maps[1].grid)], out, load_kb())
    assert (out / "annotations.json").read_text() == before
