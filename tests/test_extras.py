"""The base install (``pip install fabsight``) predicts with an exported model without PyTorch.

The test environment has every extra installed, so the base install is simulated: a child
process refuses to import any module whose distribution is not among the base dependencies
of ``pyproject.toml`` or what they require. Whatever that child can run, a user with only
the base install can run too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from clikit import run_cli
from fabsight.extras import MODULE_EXTRA

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
DEMO_LOT = REPO / "src" / "fabsight" / "examples" / "demo_lot"
EXTRAS = ("train", "serve", "scale", "assist")


def _closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions ``requirements`` install, following their own requires."""
    seen: set[str] = set()
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                stack.append(sub)
    return seen


def _modules_outside(dists: set[str]) -> set[str]:
    """Top-level modules installed here by distributions outside ``dists`` (fabsight excluded)."""
    out = set()
    for module, owners in metadata.packages_distributions().items():
        if module in sys.stdlib_module_names or module == "fabsight":
            continue
        if not any(canonicalize_name(d) in dists for d in owners):
            out.add(module)
    return out


BASE = _closure(PROJECT["dependencies"])

_CHILD = """
import importlib.abc, json, sys
BLOCKED = frozenset(json.loads(sys.argv.pop(1)))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the base install)", name=name)
sys.meta_path.insert(0, Refuse())
from fabsight.cli.main import main
sys.argv[0] = "fabsight"
main()
"""


def _base_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    blocked = sorted(_modules_outside(BASE))
    return subprocess.run([sys.executable, "-c", _CHILD, json.dumps(blocked), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_the_base_install_leaves_out_the_heavy_parts() -> None:
    assert "torch" not in BASE and "ray" not in BASE and "sentence-transformers" not in BASE
    assert {"onnxruntime", "numpy", "typer"} <= BASE


@pytest.mark.parametrize("extra", EXTRAS)
def test_every_module_an_extra_adds_is_named_in_the_table(extra: str) -> None:
    """A command missing a module tells the user which extra to install: the table must know it."""
    adds = _closure(PROJECT["optional-dependencies"][extra]) - BASE
    assert adds, f"fabsight[{extra}] adds nothing to the base install"
    modules = {m for m, owners in metadata.packages_distributions().items()
               if not m.startswith("_") and any(canonicalize_name(d) in adds for d in owners)}
    direct = {canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"][extra]}
    own = {m for m, owners in metadata.packages_distributions().items()
           if any(canonicalize_name(d) in direct - BASE for d in owners)}
    unnamed = {m for m in own if not m.startswith("_") and m not in MODULE_EXTRA}
    assert not unnamed, f"modules of fabsight[{extra}] missing from fabsight.extras.MODULE_EXTRA: {unnamed}"
    for module, named in MODULE_EXTRA.items():
        if named == extra:
            assert module in modules, f"{module} is not provided by fabsight[{extra}]"


def test_the_base_install_predicts_with_the_shipped_onnx_model(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    lot = DEMO_LOT / "LOT-A101.klarf"
    res = _base_cli("wafer", "predict", str(lot), "--runtime", "onnx", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    base = json.loads(res.stdout)["results"]
    code, out, _ = run_cli(["wafer", "predict", lot, "--runtime", "torch", "--json"], capsys)
    assert code == 0
    full = json.loads(out)["results"]
    assert [r["label"] for r in base] == [r["label"] for r in full]
    assert [r["probability"] for r in base] == pytest.approx([r["probability"] for r in full], abs=1e-4)


def test_the_base_install_reads_and_draws_maps(tmp_path: Path) -> None:
    res = _base_cli("render", str(DEMO_LOT / "LOT-A103_sort.stdf"), "--out", str(tmp_path / "m.png"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_a_command_that_needs_an_extra_names_it_in_one_line(tmp_path: Path) -> None:
    res = _base_cli("wafer", "predict", str(DEMO_LOT / "LOT-A101.klarf"), "--runtime", "torch", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: fabsight: this command needs the 'train' extra (no module 'torch'): pip install 'fabsight[train]'"]
