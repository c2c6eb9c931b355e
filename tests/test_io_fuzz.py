"""No input, however broken, makes a reader fail with anything but FormatError/FabsightError.

Random bytes and numpy-made arrays through hypothesis, and a short run of the mutation fuzzer
(``tests/fuzzkit.py``, the long run is ``benchmarks/fuzz_parsers.py``) per format.
"""

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
from fuzzkit import FORMATS as FUZZED
from fuzzkit import fuzz

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
FORMATS = ["klarf", "stdf", "g85", "lswmd", "mixedwm38", "npy", "png"]
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


@pytest.mark.parametrize("fmt", FUZZED)
def test_mutation_fuzzer_finds_nothing(fmt: str) -> None:
    """A few seconds of ``benchmarks/fuzz_parsers.py``: mutated real and written files, each read in
    a worker with 512 MiB of address space to spare and 5 s per case; any finding fails."""
    summary = fuzz(fmt, cases=1_000_000, seconds=3)
    assert summary["cases"] >= 50, summary
    assert summary["findings"] == [], summary["findings"][:5]


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
