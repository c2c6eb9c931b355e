"""Combines the command groups into one ``fabsight`` app and turns user errors into one line."""

from __future__ import annotations

import importlib
import sys

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer ≥ 0.29 vendors click

from fabsight import __version__
from fabsight.errors import FabsightError, NothingReadable
from fabsight.extras import extra_for

app = typer.Typer(
    name="fabsight",
    help="Automatic defect classification for semiconductor fabs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module exposes ``register(app)``; the order here is the order in ``--help``.
_COMMAND_MODULES: tuple[str, ...] = (
    "fabsight.cli.demo",
    "fabsight.cli.data",
    "fabsight.cli.synth",
    "fabsight.cli.render",
    "fabsight.cli.pareto",
    "fabsight.cli.wafer",
    "fabsight.cli.assist",
    "fabsight.cli.monitor",
    "fabsight.cli.labeling",
    "fabsight.cli.inspect",
    "fabsight.cli.anomaly",
    "fabsight.cli.die",
    "fabsight.cli.adc",
    "fabsight.cli.serve",
    "fabsight.cli.deploy",
    "fabsight.cli.distill",
    "fabsight.cli.batch",
    "fabsight.cli.curate",
    "fabsight.cli.yieldimpact",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fabsight {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """fabsight: read wafer data, classify patterns and defects, explain, monitor, serve."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def _usage_error(exc: UsageError) -> None:
    """A mistyped command line, in one line like every other user error (typer would draw a box
    over several lines); a command or group called bare still shows its help."""
    if isinstance(exc, NoArgsIsHelpError):
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
        sys.exit(exc.exit_code)
    where = exc.ctx.command_path if exc.ctx is not None else "fabsight"
    message = " ".join(exc.format_message().split())
    _fail(f"{where}: {message} (see '{where} --help')")


def main() -> None:
    """Entry point: user mistakes end as ``error: FILE: problem`` with exit code 2."""
    try:
        code = app(prog_name="fabsight", standalone_mode=False)  # usage errors reach the handlers below
    except UsageError as exc:
        _usage_error(exc)
    except typer.TyperException as exc:  # typer's other ClickExceptions, e.g. an unreadable file option
        _fail(" ".join(exc.format_message().split()))
    except FabsightError as exc:
        for bad in exc.unreadable if isinstance(exc, NothingReadable) else ():
            sys.stderr.write(f"error: {bad}\n")
        _fail(str(exc))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        _fail(f"{exc.filename}: {exc.strerror or exc}")
    except ModuleNotFoundError as exc:
        extra = extra_for(exc.name)
        if extra is None:
            raise
        _fail(f"fabsight: this command needs the '{extra}' extra (no module {exc.name!r}): "
              f"pip install 'fabsight[{extra}]'")
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
