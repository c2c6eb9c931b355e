"""The one error type for user mistakes.

Anything the user can fix (a corrupt file, a wrong folder, an unknown class) raises
:class:`FabsightError`; the CLI turns it into ``error: FILE: what is wrong`` and exit
code 2. Any other exception is a bug in fabsight and keeps its traceback.
"""

from __future__ import annotations

from os import PathLike


class FabsightError(Exception):
    """A problem with the user's input, reported as one line naming the file."""

    def __init__(self, path: str | PathLike[str] | None, message: str) -> None:
        self.path = None if path is None else str(path)
        # Messages quote the user's file, which may hold line breaks: shown escaped, so the
        # CLI's report stays one line whatever the input.
        self.message = message.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class FormatError(FabsightError):
    """A file that claims (or is asked) to be a format but does not parse as it."""


class ModelError(FabsightError):
    """A model directory that is missing, incomplete or does not fit the request."""


class NothingReadable(FabsightError):
    """A many-file read that stopped for lack of readable files: it carries every file it could
    not read (``unreadable``), so the CLI names each one before this line."""

    def __init__(self, path: str | PathLike[str] | None, message: str,
                 unreadable: list[FabsightError]) -> None:
        super().__init__(path, message)
        self.unreadable = list(unreadable)
