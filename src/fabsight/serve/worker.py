"""Parsing uploads in a child process with a memory cap and a time limit.

A hostile or broken file (a zip bomb, a header promising a billion dies, a parser caught in
a loop) must not take the server down. Every upload is therefore read in a child process
started for it from a fork server (so no model or thread of the server is copied into it):
the child lowers its address-space limit (``RLIMIT_AS``) before reading, and the server
kills it when it runs past the time limit. What the child reads comes back through a pipe;
a memory error, a timeout or a child that dies become :class:`ParseLimitError` (one line,
HTTP 422) and the server keeps serving. At most ``concurrent`` children run at once, so
``concurrent × memory`` bounds what parsing can take.

The worker bounds resources; it is not a sandbox: the child runs as the same user. Pickles
(WM-811K ``LSWMD.pkl``) are refused unless the service was started with ``--allow-pickle``
(:func:`read_wafers`, the one place that decides).
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.errors import FabsightError
from fabsight.types import WaferMap

log = logging.getLogger("fabsight.serve")

#: Default address-space cap of a parsing child (libraries included: about 0.35 GB at rest).
PARSE_MEMORY_BYTES = 2 << 30
#: Default time one upload may take to parse.
PARSE_SECONDS = 120.0
#: Default number of uploads parsed at once.
PARSE_CONCURRENT = 2

_CONTEXT = multiprocessing.get_context("forkserver")
# Imported once in the fork server, not in every child (pandas alone takes a second or more to import).
# Not OpenCV: its 300 MB of address space would count against every child's cap; die images import it.
_CONTEXT.set_forkserver_preload(["fabsight.io", "fabsight.die.data", "fabsight.serve.worker", "pandas", "PIL.Image"])


class ParseLimitError(FabsightError):
    """Reading an upload went past the worker's memory or time limit, or killed the worker."""


@dataclass(frozen=True)
class ParseLimits:
    memory_bytes: int = PARSE_MEMORY_BYTES
    seconds: float = PARSE_SECONDS
    concurrent: int = PARSE_CONCURRENT

    def __post_init__(self) -> None:
        if self.memory_bytes < 64 << 20 or self.seconds <= 0 or self.concurrent < 1:
            raise FabsightError(None, "parse limits: memory at least 64 MB, a positive time, at least one worker")


def _child(conn: Connection, memory_bytes: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Run ``fn(*args)`` under the memory cap and send back ``(kind, payload)``."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    try:
        reply: tuple[str, Any] = ("ok", fn(*args))
        conn.send(reply)
    except MemoryError:
        conn.send(("memory", None))
    except FabsightError as exc:
        conn.send(("user", (type(exc), exc.path, exc.message)))
    except BaseException:  # a bug in a reader: its traceback goes to the server log
        conn.send(("bug", traceback.format_exc()))
    finally:
        conn.close()


class ParseWorker:
    """Runs module-level functions in short-lived capped children (see the module docstring)."""

    def __init__(self, limits: ParseLimits | None = None) -> None:
        self.limits = limits or ParseLimits()
        self._slots = threading.BoundedSemaphore(self.limits.concurrent)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a child; its FabsightError is raised here as it was raised there."""
        with self._slots:
            kind, payload = self._run_child(fn, args)
        if kind == "ok":
            return payload
        if kind == "memory":
            raise ParseLimitError(None, f"reading the file needs more than {self.limits.memory_bytes >> 20} MB "
                                        "(the parser's memory cap)")
        if kind == "user":
            cls, path, message = payload
            raise cls(path, message)
        log.error("parser failure in the worker:\n%s", payload)
        raise RuntimeError("the parser failed in the worker (traceback in the server log)")

    def _run_child(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any]:
        receiver, sender = _CONTEXT.Pipe(duplex=False)
        child = _CONTEXT.Process(target=_child, args=(sender, self.limits.memory_bytes, fn, args), daemon=True)
        child.start()
        sender.close()
        try:
            if not receiver.poll(self.limits.seconds):
                raise ParseLimitError(None, f"reading the file took longer than {self.limits.seconds:g} s "
                                            "(the parser's time limit)")
            try:
                return receiver.recv()
            except EOFError:  # the child died without a word: killed by the kernel, a crash in C code
                child.join(5)
                raise ParseLimitError(None, f"the parser stopped (exit code {child.exitcode}) reading the file; "
                                            "it may need more than the memory cap") from None
        finally:
            receiver.close()
            if child.is_alive():
                child.kill()
            child.join()
            child.close()


def read_wafers(path: Path, formats: Sequence[str] | None, allow_pickle: bool) -> tuple[str, list[WaferMap]]:
    """What the child does for a wafer-data upload: detect the format and read; an LSWMD
    pickle only with ``--allow-pickle`` (the io layer refuses it before unpickling a byte)."""
    from fabsight.store.ingest import read_upload

    return read_upload(path, formats, allow_pickle=allow_pickle)


def read_die_image(path: Path) -> np.ndarray:
    """What the child does for a die-image upload: decode it."""
    from fabsight.die.data import read_image

    return read_image(path)
