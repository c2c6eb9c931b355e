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


def invoke(*args: object) -> tuple[int, str, str]:
    """Run ``fabsight ARGS`` through Typer's ``CliRunner`` (for tests without ``capsys``, e.g.
    in module-scoped fixtures): exit status, stdout, stderr; a FabsightError is the one line
    ``main()`` prints, exit 2; any other exception is raised."""
    from typer.testing import CliRunner

    from fabsight.cli.main import app
    from fabsight.errors import FabsightError

    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, FabsightError):
        return 2, "", f"error: {result.exception}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr
