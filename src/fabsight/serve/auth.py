"""Who may use the service: one access token, a signed session cookie, and the same-origin rule.

The service has a single secret, the *access token*. Scripts send it as
``Authorization: Bearer TOKEN``; a person types it once into ``/login``, which sets an
HttpOnly, ``SameSite=Strict`` session cookie holding ``ISSUED.HMAC(token, ISSUED)``, so the
cookie never carries the token itself, needs no server-side session table (it survives
restarts and works with several server processes) and every cookie dies when the token
changes. The token comes, in this order, from ``--token-file``, from ``FABSIGHT_TOKEN``, or
from the file :data:`TOKEN_NAME` in the files folder (created with mode 0600 at first start).

Cross-site request forgery: a browser attaches the cookie to requests that another page
makes, even from another port of the same host (same *site*), so a write authenticated
by the cookie must prove it comes from a page of this service: its ``Origin`` (or, when a
browser sends none, its ``Referer``) must name the host the request was sent to. Any write
that carries a foreign ``Origin`` is refused whatever its credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from fabsight.errors import FabsightError

#: The token file kept in the files folder when no token is given.
TOKEN_NAME = ".fabsight-token"
#: Shortest token accepted from a file or the environment (a generated one has 43 characters).
MIN_TOKEN_CHARS = 16
#: Name of the session cookie the login form sets.
COOKIE = "fabsight_session"
#: How long a login lasts.
SESSION_SECONDS = 12 * 3600
#: HTTP methods that change nothing (everything else is a write).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_token(where: str | Path, token: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        raise FabsightError(where, f"the access token must be at least {MIN_TOKEN_CHARS} printable characters "
                                   "without spaces")
    return token


def _read_private(path: Path) -> str:
    """A token file's text; refused when other users may read it (as ssh refuses such keys)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FabsightError(path, f"cannot read the token file ({exc.__class__.__name__})") from None
    if not stat.S_ISREG(mode):
        raise FabsightError(path, "the token file is not a regular file")
    if mode & 0o077:
        raise FabsightError(path, f"the token file is readable by other users (mode {stat.S_IMODE(mode):o}); "
                                  "chmod 600 it")
    return check_token(path, text)


def _create_token(path: Path) -> str:
    """Write a new random token to ``path`` (mode 0600) unless another process just did; return what is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # two first starts at once agree on one token
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_private(path)


def resolve_token(
    files_dir: str | os.PathLike[str],
    token_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] = os.environ,
) -> tuple[str, str, bool]:
    """``(token, where it came from, whether it was just generated)``; user mistakes raise FabsightError."""
    if token_file is not None:
        return _read_private(Path(token_file)), str(token_file), False
    if env.get("FABSIGHT_TOKEN"):
        return check_token("FABSIGHT_TOKEN", env["FABSIGHT_TOKEN"]), "FABSIGHT_TOKEN", False
    path = Path(files_dir) / TOKEN_NAME
    if path.exists():
        return _read_private(path), str(path), False
    return _create_token(path), str(path), True


def token_matches(token: str, given: str) -> bool:
    return hmac.compare_digest(token.encode(), given.encode())


def _signature(token: str, issued: int) -> str:
    return hmac.new(token.encode(), f"fabsight-session:{issued}".encode(), hashlib.sha256).hexdigest()


def session_cookie(token: str, now: float | None = None) -> str:
    """A fresh session cookie value for a person who gave ``token``."""
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_signature(token, issued)}"


def session_valid(token: str, cookie: str, now: float | None = None) -> bool:
    """Whether ``cookie`` was issued with ``token`` less than :data:`SESSION_SECONDS` ago."""
    issued, _, signature = cookie.partition(".")
    if not issued.isdigit():
        return False
    age = (time.time() if now is None else now) - int(issued)
    return 0 <= age < SESSION_SECONDS and hmac.compare_digest(signature, _signature(token, int(issued)))


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _netloc(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return parts.netloc.lower() if parts.scheme in ("http", "https") and parts.netloc else None


def origin_verdict(headers: Mapping[str, str]) -> str:
    """``same``, ``foreign`` or ``unknown``: where a request comes from, as far as a browser tells.

    Compared is the host (and port) the page was loaded from with the ``Host`` the request
    was sent to; the scheme is left out so a TLS-terminating proxy in front changes nothing.
    ``Sec-Fetch-Site: same-site`` (another port of this host) counts as foreign.
    """
    host = (headers.get("host") or "").lower()
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "foreign"
    origin = headers.get("origin")
    if origin is not None:
        return "same" if host and _netloc(origin) == host else "foreign"
    referer = headers.get("referer")
    if referer:
        return "same" if host and _netloc(referer) == host else "foreign"
    return "unknown"


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this service, never another site (``//evil``, ``/\\evil``)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or any(
        c in target for c in "\r\n\t"
    ):
        return "/"
    return target
