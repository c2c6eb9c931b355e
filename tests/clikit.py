"""Running ``fabsight ARGS`` in-process through ``main()``, as a user's shell would: the one
CLI runner every test file uses (``main()`` turns a FabsightError into one line + exit 2)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytest

from fabsight.cli.main import main


def exit_code_of(args: Sequence[object]) -> int:
    """Run ``fabsight ARGS``; its exit status (0 when ``main()`` returns)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["fabsight", *map(str, args)])
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0


def run_cli(args: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``fabsight ARGS``: exit status, stdout, stderr."""
    code = exit_code_of(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
