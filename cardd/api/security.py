# SPDX-License-Identifier: Apache-2.0
"""The security layer every request goes through (bridge-security.md §2).

One middleware, in this order, before anything is routed to a handler:

1. **Host** must be ``127.0.0.1:PORT``, ``localhost:PORT`` or ``[::1]:PORT`` → else 421
   ``misdirected`` (DNS rebinding; also for OPTIONS and WebSocket upgrades).
2. **Who calls.** A request with an ``Origin`` header is a browser page: the origin must be on
   the allowlist exactly (scheme, host, port; ``null`` never is) → else 403
   ``origin_not_allowed`` without CORS headers. A request without ``Origin`` but with browser
   fetch metadata (``Sec-Fetch-Site`` / ``-Mode`` / ``-Dest``) is a browser navigation or a
   no-cors load (``<img>``, ``<form>``, ``<script>``) → 403 ``origin_required``, even with a
   token. Any other request without ``Origin`` is a local program and must send
   ``Authorization: Bearer <token from the token file>`` → else 401 ``unauthorized``.
   cardd's own origin (``http://127.0.0.1:PORT`` and its spellings) gets the scope
   :data:`SELF_SCOPE` (``pin.submit``) for its own pages, plus what the configuration gives it.
3. **CORS preflight** (OPTIONS): granted only for an allowed origin, an existing path, a method
   that path has, and request headers from :data:`PREFLIGHT_HEADERS`; answered at once (Private
   Network Access preflights time out after 200 ms). Anything else gets no CORS grant. The
   preflight does not check the scope: the actual request does, with CORS headers, so the page
   can read why it was refused (``scope_denied``).
4. **Scope** of the route (``ROUTE_SCOPE``, filled by ``_route(name, scope)`` in app.py)
   → else 403 ``scope_denied``. Local programs with the token have every scope.
5. **Open requests per origin** (cardd.api.limits) → 429 ``too_many_connections``.
6. **Bodies.** Every method other than GET/HEAD/OPTIONS needs ``Content-Type:
   application/json`` (→ 415 ``unsupported_media_type``), so browsers must preflight it. The body
   is read here, at most ``[api] max_body_bytes`` (→ 413 ``body_too_large``) within ``[api]
   read_timeout`` seconds (→ 408 ``request_timeout``), parsed, and checked against the route's
   :class:`~cardd.api.schema.BodySchema` from cardd/api/routedoc.py (→ 400 ``invalid_input``
   naming the key). Handlers get the checked dict from ``json_body(request)``.

**Headers on every answer** (errors, 404/405, preflights, SSE and WebSocket handshakes
included) come from :func:`add_security_headers`, an ``on_response_prepare`` hook: the
:data:`SECURITY_HEADERS`, and ``Access-Control-Allow-Origin`` + ``Vary: Origin`` for an allowed
origin. The hook only adds headers the handler has not set itself: a route that serves HTML or
JavaScript (the PIN page, ``/v1/client/cardd.js``) sets its own ``Content-Security-Policy``
(and e.g. ``Cross-Origin-Resource-Policy: cross-origin`` for a script other sites load, or
``Cross-Origin-Opener-Policy``) on its response and keeps them.

Routes that a browser loads without an Origin header (navigation, ``<script src>``) must be
described with ``public=True`` (cardd.api.routedoc.describe); they skip step 2, nothing else.

The bearer token lives in a file (0600, created at first start). The daemon re-reads it when the
file's (mtime_ns, inode, size) change. It looks at most once per :data:`TOKEN_RECHECK_SECONDS`
(1 s) while tokens are accepted, and at once when a token is refused: after ``cardd token
rotate`` the new token works on its first request and **the old one is refused within 1 s**
(a ``stat()`` per request cost a third of the whole request; bench/RESULTS.md). A deleted or
emptied token file is likewise noticed within 1 s.

Cost (issue 5: ≥ 0.8 × a bare aiohttp handler): everything above is **one** aiohttp
middleware (each extra layer costs a coroutine and a wrapper per request), reading tables built
once per configuration: :func:`cardd.reload.derived` rebuilds them when a reload swaps the
``[api]`` section, so a request does not check for reloads. The same middleware maps
:class:`~cardd.errors.CardError` and unexpected exceptions of handlers to JSON answers.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from cardd.api.bodies import BODY_KEY  # the checked JSON body of a state-changing request
from cardd.api.errors import from_card_error, json_error
from cardd.api.limits import (
    BodyTimeout,
    BodyTooLarge,
    GuardedRequestHandler,
    OpenRequests,
    read_body,
)
from cardd.api.schema import BodySchema
from cardd.config import ApiConfig
from cardd.errors import CardError, InvalidInput, UnsupportedMediaType
from cardd.reload import derived

logger = logging.getLogger(__name__)

CALLER_KEY = "cardd.caller"  # request key for the Caller; handlers read request[CALLER_KEY]
CORS_KEY = "cardd.cors_origin"  # the allowed Origin the answer's CORS headers name
#: scope a route needs; routes without one are open to any allowed caller
ROUTE_SCOPE: dict[str, str] = {}
#: the scope cardd's own origin (its PIN page) has, and nobody else can be given
SELF_SCOPE = "pin.submit"
#: request headers a preflight may ask for
PREFLIGHT_HEADERS = frozenset({"content-type"})
PREFLIGHT_MAX_AGE = "600"
#: how long an accepted token is trusted before the token file is looked at again
TOKEN_RECHECK_SECONDS = 1.0
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # API answers are read through CORS, which CORP does not affect; it stops no-cors loads
    # (<img>, <script>) of API answers by other sites.
    "Cross-Origin-Resource-Policy": "same-origin",
    "Server": "cardd",  # not aiohttp's name and version
}


_HEADER_ITEMS = tuple((k, v) for k, v in SECURITY_HEADERS.items() if k != "Server")


@dataclass(frozen=True)
class Caller:
    """Who is calling: a browser page of an allowlisted origin, or a local program."""

    origin: str | None
    scopes: frozenset[str]
    local: bool  # authenticated with the token file


ALL_SCOPES = frozenset({"readers", "moica", "rfid:read", "rfid:write"})
_PUBLIC_CALLER = Caller(None, frozenset(), local=False)


# -- the token file ---------------------------------------------------------------------------


def write_new_token(path: Path) -> str:
    """Write a fresh random token to ``path`` atomically (temp file, fsync, rename), mode 0600.

    When root rotates the token of a daemon that runs as another user, the new file keeps the
    old file's owner and group, or the daemon could no longer read it.
    """
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.stat()
        owner: tuple[int, int] | None = (st.st_uid, st.st_gid)
    except FileNotFoundError:
        owner = None
    fd, tmp = tempfile.mkstemp(prefix=".token-", dir=path.parent)  # created 0600
    try:
        try:
            os.fchmod(fd, 0o600)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
            os.write(fd, (token + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return token


def ensure_token(path: Path) -> str:
    """Read the bearer token, creating it (0600) at first start."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    return write_new_token(path)


class TokenStore:
    """The token file as the daemon sees it: re-read whenever the file changes.

    The file is looked at (one ``stat()``) at most every :data:`TOKEN_RECHECK_SECONDS` while
    the token given matches, and at once whenever it does not: a rotated token works at once,
    the old one is refused within that second. A missing, unreadable or empty file accepts no
    token at all (fail closed).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._path_str = str(path)  # os.stat(str) skips Path.__fspath__
        ensure_token(path)
        self._stat_key: tuple[int, int, int] | None = None
        self._token: bytes | None = None
        self._recheck_at = 0.0  # time.monotonic() after which the file is looked at again

    def current(self, *, fresh: bool = False) -> bytes | None:
        """The token in force; ``fresh`` looks at the file now instead of within a second."""
        now = time.monotonic()
        if not fresh and now < self._recheck_at:
            return self._token
        self._recheck_at = now + TOKEN_RECHECK_SECONDS
        try:
            st = os.stat(self._path_str)
        except OSError:
            self._token = self._stat_key = None
            return None
        key = (st.st_mtime_ns, st.st_ino, st.st_size)
        if key != self._stat_key:
            try:
                text = self.path.read_text(encoding="ascii").strip()
            except (OSError, UnicodeDecodeError):
                logger.warning("cannot read the token file %s", self.path)
                self._token = self._stat_key = None
                return None
            if self._stat_key is not None:
                logger.info("token file %s changed: using the new token", self.path)
            self._token = text.encode() if text else None
            self._stat_key = key
        return self._token

    def accepts(self, given: str) -> bool:
        if not given:
            return False
        raw = given.encode()
        token = self.current()
        if token is not None and hmac.compare_digest(raw, token):
            return True
        token = self.current(fresh=True)  # refused: maybe the file changed within the second
        return token is not None and hmac.compare_digest(raw, token)


class _FixedToken(TokenStore):
    """A fixed token, for in-process tests that build the middleware by hand."""

    def __init__(self, token: str) -> None:
        self.path = Path()
        self._token = token.encode()

    def current(self, *, fresh: bool = False) -> bytes | None:
        return self._token


# -- headers ----------------------------------------------------------------------------------


async def add_security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every answer gets the security headers the handler did not
    set itself, and the CORS headers of an allowed origin."""
    headers = response.headers
    setdefault = headers.setdefault  # one C call per header: this runs for every answer
    for k, v in _HEADER_ITEMS:
        setdefault(k, v)
    # aiohttp has set its own Server header (name and version) before this hook runs
    headers["Server"] = "cardd"
    origin = request.get(CORS_KEY)  # the middleware sets it (None) on every request it passes
    if origin is not None:
        setdefault("Access-Control-Allow-Origin", origin)
    setdefault("Vary", "Origin")  # answers differ by Origin: caches must not mix them


# -- the middleware ---------------------------------------------------------------------------


def self_origins(port: int) -> frozenset[str]:
    return frozenset(
        {f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"}
    )


class _Tables:
    """What the middleware derives from one ``[api]`` section; built again on reload."""

    __slots__ = ("allowed_hosts", "callers", "open_requests", "max_body", "read_timeout")

    def __init__(self, api: ApiConfig) -> None:
        self.allowed_hosts = frozenset(api.allowed_hosts)
        scopes_of: dict[str, frozenset[str]] = {p.origin: p.scopes for p in api.origins}
        for own in self_origins(api.port):
            scopes_of[own] = scopes_of.get(own, frozenset()) | {SELF_SCOPE}
        self.callers = {o: Caller(o, scopes, local=False) for o, scopes in scopes_of.items()}
        # per-origin counts start afresh after a reload: streams opened before it are no
        # longer counted (a reload can briefly let an origin hold twice its limit)
        self.open_requests = OpenRequests(api.max_connections_per_origin)
        self.max_body, self.read_timeout = api.max_body_bytes, api.read_timeout


def security_middleware(api: ApiConfig, token: str | TokenStore):  # type: ignore[no-untyped-def]
    """The one middleware of the API (steps 1-6 above, then the handler's errors as JSON).

    ``api`` may be the ``[api]`` section of :attr:`cardd.reload.LiveConfig.view`: origins and
    scopes then follow configuration reloads (SIGHUP) from the next request on.
    """
    import cardd.api.openapi  # noqa: F401 - registers the route records (body schemas)
    from cardd.api.routedoc import ROUTE_DOCS

    tokens = _FixedToken(token) if isinstance(token, str) else token
    tables = derived(api, _Tables)
    local_caller = Caller(None, ALL_SCOPES, local=True)
    route_docs_get, route_scope_get = ROUTE_DOCS.get, ROUTE_SCOPE.get

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        t = tables.value  # one read: a reload swaps the whole table set
        headers = request.headers
        host = headers.get("Host", "")
        if host not in t.allowed_hosts:
            # DNS rebinding: a foreign name resolving to 127.0.0.1. Say nothing more.
            logger.warning("refused request with Host %r", host[:80])
            return json_error(421, "misdirected", "Wrong host.")

        match_info = request.match_info
        route_name = match_info.route.name
        doc = route_docs_get(route_name) if route_name else None
        method = request.method

        origin = headers.get("Origin")
        request[CORS_KEY] = None  # set, so the header hook's lookup never raises KeyError
        if doc is not None and doc.public and (method == "GET" or method == "HEAD"):
            caller = _PUBLIC_CALLER
            if origin is not None and origin in t.callers:
                request[CORS_KEY] = origin
        elif origin is not None:
            found = t.callers.get(origin)
            if found is None:  # includes "null" and every origin not listed exactly
                logger.warning("refused origin %r", origin[:100])
                return json_error(
                    403, "origin_not_allowed", "This site is not allowed to use cardd."
                )
            caller = found
            request[CORS_KEY] = origin
        elif (
            "Sec-Fetch-Mode" in headers
            or "Sec-Fetch-Site" in headers
            or "Sec-Fetch-Dest" in headers
        ):
            # A browser sent this without Origin: a navigation, a form or a no-cors load by
            # some page. Whatever credential it carries, it is not a local program.
            logger.warning("refused a browser request without Origin to %s", request.path[:100])
            return json_error(
                403,
                "origin_required",
                "Browser pages must call cardd with fetch() from an allowed site.",
            )
        else:
            auth = headers.get("Authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not tokens.accepts(given):
                return json_error(
                    401,
                    "unauthorized",
                    "Local callers must send the token from cardd's token file.",
                    {"WWW-Authenticate": "Bearer"},
                )
            caller = local_caller

        if method == "OPTIONS":
            return _preflight(request, caller)

        if match_info.http_exception is not None:  # 404, 405: the same JSON errors as the rest
            return _http_error(match_info.http_exception)

        scope = route_scope_get(route_name) if route_name else None
        if scope is not None and scope not in caller.scopes:
            return json_error(403, "scope_denied", f"This site may not use '{scope}'.")

        counted = caller.origin
        release = protocol = None
        if counted is not None:
            open_requests = t.open_requests
            if not open_requests.acquire(counted):
                logger.warning(
                    "origin %s has %d requests open; refused another", counted, open_requests.limit
                )
                return json_error(
                    429,
                    "too_many_connections",
                    "Too many open requests from this site; close some and try again.",
                )
            release = open_requests.releaser(counted)
            protocol = request.protocol
            if isinstance(protocol, GuardedRequestHandler):
                protocol.call_on_lost(release)  # a closed event stream stops counting at once
        try:
            request[CALLER_KEY] = caller
            if method not in _SAFE_METHODS:
                refused = await _read_json_body(
                    request, doc.body if doc else None, t.max_body, t.read_timeout
                )
                if refused is not None:
                    return refused
            return await handler(request)
        except web.HTTPException as e:
            return _http_error(e)
        except CardError as e:
            return from_card_error(e)
        except Exception:  # CancelledError is not an Exception: a closed client ends the handler
            logger.exception("unexpected error in %s %s", method, request.path)
            return json_error(500, "internal_error", "cardd hit an internal error; see its log.")
        finally:
            if release is not None:
                release()
                if isinstance(protocol, GuardedRequestHandler):
                    protocol.forget(release)

    return middleware


async def _read_json_body(
    request: web.Request, schema: BodySchema | None, max_body: int, read_timeout: float
) -> web.StreamResponse | None:
    """Read, parse and check the body into request[BODY_KEY]; an error answer, or None."""
    import json

    try:
        if request.content_type != "application/json":
            raise UnsupportedMediaType("send the request body as application/json")
        raw = await read_body(request, max_body, read_timeout)
        try:
            body: Any = json.loads(raw) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InvalidInput("the request body is not valid JSON") from None
        if schema is not None:
            body = schema.validate(body)
        request[BODY_KEY] = body
        return None
    except CardError as e:
        return from_card_error(e)
    except BodyTooLarge:
        resp = json_error(
            413, "body_too_large", f"The request body is larger than {max_body} bytes."
        )
    except BodyTimeout:
        logger.warning(
            "request body to %s not complete in %.1f s", request.path[:100], read_timeout
        )
        resp = json_error(408, "request_timeout", "The request was sent too slowly.")
    resp.force_close()  # the rest of the body is not worth reading
    return resp


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}
_HTTP_MESSAGES = {404: "No such API path.", 405: "This path does not take that method."}


def _http_error(e: web.HTTPException) -> web.Response:
    status = e.status
    headers = {"Allow": e.headers["Allow"]} if status == 405 and "Allow" in e.headers else None
    return json_error(
        status, _HTTP_CODES.get(status, "http_error"), _HTTP_MESSAGES.get(status, e.reason), headers
    )


def _preflight(request: web.Request, caller: Caller) -> web.Response:
    """CORS / Private Network Access preflight; a grant only when everything asked is allowed."""
    if caller.origin is None:  # a local program asking OPTIONS: just say what the path takes
        return web.Response(status=204)
    exc = request.match_info.http_exception
    if exc is None or exc.status != 405:  # unknown path (an OPTIONS route we do not have)
        request[CORS_KEY] = None  # no CORS grant on this answer
        return json_error(404, "not_found", "No such API path.")
    methods = sorted(set(exc.allowed_methods) - {"HEAD", "OPTIONS"})  # type: ignore[attr-defined]
    wanted_method = request.headers.get("Access-Control-Request-Method", "")
    wanted_headers = {
        h.strip().lower()
        for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
        if h.strip()
    }
    if wanted_method not in methods or not wanted_headers <= PREFLIGHT_HEADERS:
        logger.info(
            "refused preflight from %s: %s %s",
            caller.origin,
            wanted_method,
            sorted(wanted_headers)[:5],
        )
        request[CORS_KEY] = None  # no CORS grant on this answer
        return json_error(403, "preflight_refused", "This method or header is not allowed.")
    resp = web.Response(status=204)
    resp.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
    resp.headers["Access-Control-Allow-Headers"] = "Content-Type"
    resp.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    if request.headers.get("Access-Control-Request-Private-Network") == "true":
        resp.headers["Access-Control-Allow-Private-Network"] = "true"
    return resp
