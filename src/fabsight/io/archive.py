"""Unpack a zip a client sent (a KLARF with its review images) without trusting anything in it.

A zip names its own members and declares their sizes, so a hostile one can point a member
outside the folder (``../../etc/x``, ``/abs``, ``C:\\x``), store a symbolic link, repeat a
name, or inflate a few kilobytes into gigabytes. :func:`extract_zip` refuses each of those
from the central directory, before writing anything: only plain relative names, only
stored or deflated members, at most ``max_members`` of them, and at most ``max_bytes``
uncompressed in all. While inflating it counts the bytes that really come out, so a member
that lies about its size is stopped at its declared size too.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fabsight.errors import FormatError

_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipLimits:
    """What one uploaded archive may hold; a service derives ``max_bytes`` from its upload limit."""

    #: Uncompressed bytes of all members together.
    max_bytes: int = 256 * 1024 * 1024
    #: Members (files and folders).
    max_members: int = 20_000


def _member_path(path: str | os.PathLike[str], info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path, or a FormatError when it is not a plain name inside the archive."""
    name = info.filename
    parts = PurePosixPath(name).parts
    bad = (not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in (parts[0] if parts else "")
           or any(p in ("..", ".") for p in parts))
    if bad:
        raise FormatError(path, f"zip member {name[:200]!r} is not a relative path inside the archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise FormatError(path, f"zip member {name[:200]!r} is a symbolic link")
    if info.compress_type not in _METHODS:
        raise FormatError(path, f"zip member {name[:200]!r}: compression method {info.compress_type} "
                                "is not stored or deflated")
    return PurePosixPath(*parts)


def _check(path: str | os.PathLike[str], infos: list[zipfile.ZipInfo], limits: ZipLimits) -> list[PurePosixPath]:
    if len(infos) > limits.max_members:
        raise FormatError(path, f"the zip holds {len(infos)} members; the limit is {limits.max_members}")
    total = sum(i.file_size for i in infos)
    if total > limits.max_bytes:
        raise FormatError(path, f"the zip inflates to {total} bytes; the limit is {limits.max_bytes}")
    names = [_member_path(path, i) for i in infos]
    seen: set[str] = set()
    for n in names:
        key = str(n).lower()
        if key in seen:
            raise FormatError(path, f"zip member {str(n)[:200]!r} appears twice")
        seen.add(key)
    return names


def _copy(path: str | os.PathLike[str], zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> int:
    written = 0
    with zf.open(info) as src, open(target, "xb") as dst:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise FormatError(path, f"zip member {info.filename[:200]!r} inflates past its declared size")
            dst.write(chunk)
    return written


def extract_zip(path: str | os.PathLike[str], dest: str | os.PathLike[str],
                limits: ZipLimits | None = None) -> list[Path]:
    """Unpack the archive at ``path`` into the existing, empty folder ``dest``; the files written.

    Everything is checked from the central directory first (see the module docstring), so a
    refused archive writes nothing; a damaged member found while inflating raises
    :class:`FormatError` and leaves ``dest`` for the caller to remove.
    """
    limits = limits or ZipLimits()
    root = Path(dest)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = _check(path, infos, limits)
            out = []
            for info, name in zip(infos, names, strict=True):
                target = root.joinpath(*name.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy(path, zf, info, target)
                out.append(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError) as exc:
        raise FormatError(path, f"not a readable zip archive ({str(exc)[:120]})") from None
    return out
