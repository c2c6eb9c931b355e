"""No input, however broken, makes a reader fail with anything but FormatError/FabsightError."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabsight.errors import FabsightError
from fabsight.io import detect_format, read_maps
from fabsight.types import WaferMap

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
FORMATS = ["klarf", "stdf", "g85", "lswmd", "mixedwm38", "npy", "png"]
SEEDS = {
    "klarf": ["klarf/simple18.klarf", "klarf/klarf12DefectListExample.klarf", "klarf/simple12.klarf"],
    "stdf": ["stdf/lot2.stdf"],
    "g85": ["g85/SEMI_G85_1101_MIN.xml"],
}


def _read(path: Path, fmt: str | None) -> None:
    try:
        maps = read_maps(path, format=fmt)
    except FabsightError as exc:
        assert "\n" not in str(exc)  # one line for the CLI
        return
    assert all(isinstance(m, WaferMap) for m in maps)


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(tmp_path: Path, fmt: str, data: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    _read(path, fmt)
    _read(path, None)


@st.composite
def _mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    """Truncations, byte flips, deleted and duplicated spans of a real file."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "flip", "delete", "dup", "digit"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        j = min(len(data), i + draw(st.integers(1, 64)))
        if kind == "cut":
            del data[i:]
        elif kind == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[i:j]
        elif kind == "dup":
            data[i:i] = data[i:j]
        elif kind == "digit" and data:
            data[i] = ord(draw(st.sampled_from('0123456789-.;{} \n"NA')))
    return bytes(data)


@pytest.mark.shared
@pytest.mark.parametrize("seed", [s for v in SEEDS.values() for s in v])
def test_mutated_real_files(shared: Path, tmp_path: Path, seed: str) -> None:
    raw = (shared / "fixtures" / seed).read_bytes()
    if len(raw) > 200_000:  # the big STDF: keep its head so each example stays fast
        raw = raw[:200_000]
    fmt = next(k for k, v in SEEDS.items() if seed in v)

    @FUZZ
    @given(data=_mutations(raw))
    def check(data: bytes) -> None:
        path = tmp_path / "m"
        path.write_bytes(data)
        _read(path, fmt)

    check()


@FUZZ
@given(
    arrays=st.dictionaries(
        st.sampled_from(["arr_0", "arr_1", "x"]),
        st.builds(
            lambda shape, fill: np.full(shape, fill),
            st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple),
            st.integers(-3, 5),
        ),
    )
)
def test_npz_shapes(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, **arrays)
    _read(path, "mixedwm38")


@settings(FUZZ, max_examples=25)
@given(
    obj=st.recursive(
        st.none() | st.integers() | st.text(max_size=5) | st.floats(allow_nan=True),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=8,
    ),
    protocol=st.integers(2, 5),
)
def test_pickles_of_other_things(tmp_path: Path, obj: object, protocol: int) -> None:
    buf = io.BytesIO()
    pickle.dump(obj, buf, protocol=protocol)
    path = tmp_path / "p.pkl"
    path.write_bytes(buf.getvalue())
    _read(path, "lswmd")


def test_detect_format_never_crashes_on_a_folder_or_missing_file(tmp_path: Path) -> None:
    assert detect_format(tmp_path) == "folder"
    with pytest.raises(FabsightError, match="no such file"):
        detect_format(tmp_path / "missing.000")
