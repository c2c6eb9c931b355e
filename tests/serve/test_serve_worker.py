"""The parse worker: memory cap, time limit, a dying child, user errors passed through unchanged."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from fabsight.errors import FormatError
from fabsight.serve.worker import ParseLimitError, ParseLimits, ParseWorker, read_wafers

LIMITS = ParseLimits(memory_bytes=1024 << 20, seconds=20)  # ~350 MB of it are libraries


def test_memory_cap_stops_a_greedy_parse() -> None:
    worker = ParseWorker(LIMITS)
    assert worker.run(np.zeros, 64 << 20, np.uint8).nbytes == 64 << 20  # under the cap: the array comes back
    with pytest.raises(ParseLimitError, match=r"needs more than 1024 MB \(the parser's memory cap\)"):
        worker.run(np.ones, 1 << 31, np.uint8)  # 2 GiB: refused in the child, this process untouched


def test_time_limit_kills_the_child() -> None:
    worker = ParseWorker(ParseLimits(memory_bytes=1024 << 20, seconds=1))
    t0 = time.monotonic()
    with pytest.raises(ParseLimitError, match=r"took longer than 1 s"):
        worker.run(time.sleep, 60)
    assert time.monotonic() - t0 < 10
    assert worker.run(os.getpid) != os.getpid()  # the next parse gets a fresh child


def test_a_child_that_dies_is_one_error() -> None:
    with pytest.raises(ParseLimitError, match=r"the parser stopped \(exit code 3\)"):
        ParseWorker(LIMITS).run(os._exit, 3)


def test_user_errors_keep_their_type_and_message(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not wafer data\n")
    with pytest.raises(FormatError, match="unrecognised wafer data") as exc:
        ParseWorker(LIMITS).run(read_wafers, bad, None, False)
    assert exc.value.path == str(bad)


def test_limits_are_checked() -> None:
    with pytest.raises(Exception, match="memory at least 64 MB"):
        ParseLimits(memory_bytes=1 << 20)
