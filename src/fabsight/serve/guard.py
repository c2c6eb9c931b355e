"""The service's front door: one ASGI middleware every HTTP request passes first.

In order, it

1. refuses a write (any method but GET/HEAD/OPTIONS) that a browser says comes from another
   origin (403), and any request without valid credentials (401, or for a dashboard page a
   redirect to ``/login``) — see :mod:`fabsight.serve.auth` for the rules;
2. answers 413 when ``Content-Length`` announces a body over the limit, and counts the bytes
   of every body as they arrive, so a chunked body (no ``Content-Length``) is stopped at the
   limit too instead of being spooled to disk in full;
3. adds headers that keep other pages from framing or sniffing responses
   (``X-Frame-Options``, ``Content-Security-Policy``, ``nosniff``); no CORS header is ever sent;
4. turns any exception that escapes the app into a generic 500 JSON answer, the traceback
   going to the server log under an incident id and never into the response.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import quote

from fastapi import HTTPException, status
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fabsight.serve.auth import COOKIE, SAFE_METHODS, bearer, origin_verdict, session_valid, token_matches

log = logging.getLogger("fabsight.serve")

#: Bytes a body may exceed the file-size limit by (multipart boundaries, part headers, the lot field).
MULTIPART_SLACK = 64 * 1024
#: Paths anyone may request: the login form and the static files pages need before logging in.
OPEN_PATHS = frozenset({"/login", "/logout"})
OPEN_PREFIXES = ("/static/", "/docs-assets/")
#: Pages whose HTML runs the inline script that FastAPI's Swagger UI / ReDoc pages are made of.
DOCS_PATHS = frozenset({"/docs", "/redoc"})

_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; " \
       "form-action 'self'; base-uri 'none'"
_DOCS_CSP = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; " \
            "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'"


def _unauthenticated(request: Request, reason: str) -> Response:
    wants_page = request.method == "GET" and not request.url.path.startswith("/api/") and \
        request.url.path != "/openapi.json" and "text/html" in request.headers.get("accept", "")
    if wants_page:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status.HTTP_303_SEE_OTHER)
    return JSONResponse({"detail": reason}, status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


def refusal(request: Request, token: str, public_read: bool) -> Response | None:
    """The answer to a request that may not go on, or None (and ``request.state.auth`` says how it got in)."""
    write = request.method not in SAFE_METHODS
    verdict = origin_verdict(request.headers)
    if write and verdict == "foreign":
        return JSONResponse({"detail": "cross-origin request refused"}, status.HTTP_403_FORBIDDEN)
    request.state.auth = None
    path = request.url.path
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    given = bearer(request.headers.get("authorization"))
    if given is not None:
        if not token_matches(token, given):
            return JSONResponse({"detail": "wrong access token"}, status.HTTP_401_UNAUTHORIZED,
                                headers={"WWW-Authenticate": "Bearer"})
        request.state.auth = "token"
        return None
    cookie = request.cookies.get(COOKIE)
    if cookie and session_valid(token, cookie):
        if write and verdict != "same":
            detail = "a write with the session cookie needs this site's Origin or Referer header"
            return JSONResponse({"detail": detail}, status.HTTP_403_FORBIDDEN)
        request.state.auth = "cookie"
        return None
    if public_read and not write:
        return None
    reason = "log in again: the session has expired" if cookie else \
        "authentication required: send 'Authorization: Bearer TOKEN' or log in at /login"
    return _unauthenticated(request, reason)


def _with_headers(message: Message, path: str) -> Message:
    headers = list(message.get("headers", []))
    csp = _DOCS_CSP if path in DOCS_PATHS else _CSP
    headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                (b"referrer-policy", b"same-origin"), (b"content-security-policy", csp.encode())]
    return {**message, "headers": headers}


class Guard:
    """The middleware (see the module docstring); the service's token and limits come from ``app.state.service``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        svc = request.app.state.service
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = _with_headers(message, scope["path"])
            await send(message)

        early = refusal(request, svc.token, svc.public_read) or self._oversized(request, svc.max_upload_bytes)
        if early is not None:
            await early(scope, receive, send_secured)
            return
        try:
            await self.app(scope, _counting(receive, svc.max_upload_bytes), send_secured)
        except Exception:
            if started:
                raise
            incident = secrets.token_hex(4)
            log.exception("internal error %s on %s %s", incident, request.method, scope["path"])
            detail = f"internal server error (incident {incident}; the details are in the server log)"
            await JSONResponse({"detail": detail}, status.HTTP_500_INTERNAL_SERVER_ERROR)(scope, receive, send_secured)

    @staticmethod
    def _oversized(request: Request, limit: int) -> Response | None:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + MULTIPART_SLACK:
            detail = f"upload larger than {limit} bytes (Content-Length {length})"
            return JSONResponse({"detail": detail}, status.HTTP_413_CONTENT_TOO_LARGE)
        return None


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 as soon as the body passes ``limit`` plus the multipart slack."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit + MULTIPART_SLACK:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than {limit} bytes")
        return message

    return wrapped
