"""``fabsight info`` / ``convert`` end to end through the real entry point (exit codes, one-line errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clikit import run_cli
from fabsight.cli.main import app

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """``fabsight ARGS`` in-process through ``main()``, which turns FabsightError into one line + exit 2."""

    def _run(*args: str) -> Result:
        return Result(*run_cli(args, capsys))

    return _run


def test_entry_point_subprocess(tmp_path: Path) -> None:
    """Once through a real process: exit status 2 and exactly one line on stderr, no traceback."""
    path = tmp_path / "empty.000"
    path.write_bytes(b"")
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-m", "fabsight", "info", str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 2 and res.stderr == f"error: {path}: empty file\n"


@pytest.mark.shared
def test_info_json_on_real_files(shared: Path, run: Callable[..., Result]) -> None:
    res = run(
        "info", str(shared / "fixtures/klarf/QUU_NUU.000"), str(shared / "fixtures/g85/SEMI_G85_1101_ALL.xml"), "--json"
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["errors"] == []
    klarf, g85 = report["files"]
    assert (klarf["format"], klarf["wafers"]) == ("klarf", 3)
    assert [w["defects"] for w in klarf["maps"]] == [56, 36, 95]
    assert g85["format"] == "g85" and g85["maps"][0]["good"] == 2765


@pytest.mark.shared
def test_info_human_table(shared: Path) -> None:
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["info", str(shared / "fixtures/stdf/lot2.stdf")])
    assert res.exit_code == 0
    assert "GAL-LOT" in res.stdout and "1389" in res.stdout and "stdf" in res.stdout


@pytest.mark.shared
@pytest.mark.parametrize("to", ["g85", "klarf", "stdf", "npz", "lswmd", "folder"])
def test_convert_keeps_every_die(shared: Path, tmp_path: Path, to: str, run: Callable[..., Result]) -> None:
    out = tmp_path / f"out.{to}"
    res = run("convert", str(shared / "fixtures/klarf/QUU_NUU.000"), "--to", to, "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["wafers"] == 3
    (info,) = json.loads(run("info", str(out), "--json").stdout)["files"]
    assert info["wafers"] == 3
    assert sorted((w["good"], w["failing"], w["off"]) for w in info["maps"]) == [
        (4584, 58, 1278),
        (4605, 37, 1278),
        (4620, 22, 1278),
    ]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.000", b"", "empty file"),
        ("random.stdf", bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)), "unrecognised"),
        ("broken.xml", b"<Map><Device Rows='1'", "broken XML"),
        ("bin.klarf", b"FileVersion 1 2;\x00\xff\x00", "binary data"),
    ],
)
def test_bad_input_one_line_exit_2(
    tmp_path: Path, name: str, content: bytes, problem: str, run: Callable[..., Result]
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    res = run("info", str(path))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: {path}: ")
    assert problem in res.stderr and "Traceback" not in res.stderr


@pytest.mark.shared
def test_bad_klarf_and_bad_target(shared: Path, tmp_path: Path, run: Callable[..., Result]) -> None:
    bad = shared / "fixtures/klarf/bad12DefectList.klarf"
    res = run("convert", str(bad), "--to", "g85", "--out", str(tmp_path / "x.xml"))
    assert res.returncode == 2 and res.stderr == f"error: {bad}: " + res.stderr.split(": ", 2)[2]
    assert res.stderr.count("\n") == 1
    res = run("convert", str(shared / "fixtures/klarf/simple12.klarf"), "--to", "pdf", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "--to must be one of" in res.stderr
    assert not (tmp_path / "x").exists()


def test_png_with_many_levels_names_the_file(tmp_path: Path, run: Callable[..., Result]) -> None:
    from PIL import Image

    path = tmp_path / "maps" / "Center" / "odd.png"
    path.parent.mkdir(parents=True)
    Image.fromarray((np.arange(64).reshape(8, 8) * 3).astype(np.uint8), mode="L").save(path)
    res = run("info", str(tmp_path / "maps"))
    assert res.returncode == 2 and res.stderr.startswith(f"error: {path}: PNG has 64 grey levels")


def test_info_reports_empty_class_folders(tmp_path: Path, run: Callable[..., Result]) -> None:
    (tmp_path / "Donut").mkdir()
    (tmp_path / "Center").mkdir()
    np.save(tmp_path / "Center" / "a.npy", np.array([[0, 1], [2, 1]]))
    res = run("info", str(tmp_path), "--json")
    assert res.returncode == 0
    assert json.loads(res.stdout)["files"][0]["maps"][0]["labels"] == ["Center"]
    assert "warning:" in res.stderr and "'Donut' holds no .png/.npy maps" in res.stderr


@pytest.mark.parametrize(("args", "where", "problem"), [
    (["die", "adapt", "x", "--out", "y", "--head-warmup", "0.7"], "fabsight die adapt",
     "Invalid value for '--head-warmup'"),
    (["die", "predic"], "fabsight die", "No such command 'predic'"),
    (["die", "predict"], "fabsight die predict", "Missing argument 'model_dir'"),
    (["info", "--bogus"], "fabsight info", "No such option: --bogus"),
])
def test_command_line_mistakes_are_one_line(run: Callable[..., Result], args: list[str], where: str,
                                            problem: str) -> None:
    """A mistyped command line ends like a bad file: one line naming the command and the problem, exit 2."""
    res = run(*args)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(f"error: {where}: ") and problem in res.stderr
    assert res.stderr.endswith(f"(see '{where} --help')\n") and res.stderr.count("\n") == 1


def test_bare_group_and_help_still_show_help(run: Callable[..., Result]) -> None:
    bare = run("die")
    assert bare.returncode == 2 and "predict" in bare.stdout and "adapt" in bare.stdout
    helped = run("die", "predict", "--help")
    assert helped.returncode == 0 and "--tta" in helped.stdout and helped.stderr == ""
    assert run("--version").stdout.startswith("fabsight ")
