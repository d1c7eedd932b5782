# SPDX-License-Identifier: Apache-2.0
"""The security middleware every request goes through (bridge-security.md §2).

Order: Host allowlist (421, DNS rebinding) → caller identification (exact Origin allowlist, or
a bearer token for local programs without an Origin) → per-route scope → CORS headers only for
an allowed origin. Nothing is routed before these checks.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from cardd.api.errors import json_error
from cardd.config import ApiConfig

logger = logging.getLogger(__name__)

CALLER_KEY = "cardd.caller"  # request key for the Caller; handlers read request[CALLER_KEY]
#: scope a route needs; routes without one are open to any allowed caller
ROUTE_SCOPE: dict[str, str] = {}

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-site",
}


@dataclass(frozen=True)
class Caller:
    """Who is calling: a browser page of an allowlisted origin, or a local program."""

    origin: str | None
    scopes: frozenset[str]
    local: bool  # authenticated with the token file


ALL_SCOPES = frozenset({"readers", "moica", "rfid:read", "rfid:write"})


def ensure_token(path: Path) -> str:
    """Read the bearer token, creating it (0600) at first start."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _with_headers(resp: web.StreamResponse, origin: str | None) -> web.StreamResponse:
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    if origin is not None:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Vary"] = "Origin"
    return resp


def security_middleware(api: ApiConfig, token: str):  # type: ignore[no-untyped-def]
    allowed_hosts = api.allowed_hosts

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        host = request.headers.get("Host", "")
        if host not in allowed_hosts:
            # DNS rebinding: a foreign name resolving to 127.0.0.1. Say nothing more.
            logger.warning("refused request with Host %r", host[:80])
            return _with_headers(json_error(421, "misdirected", "Wrong host."), None)

        origin = request.headers.get("Origin")
        if origin is not None:
            policy = api.origin_policy(origin)
            if policy is None:  # includes "null" and every origin not listed exactly
                logger.warning("refused origin %r", origin[:100])
                return _with_headers(json_error(403, "origin_not_allowed", "This site is not allowed to use cardd."), None)
            caller = Caller(origin, policy.scopes, local=False)
        else:
            auth = request.headers.get("Authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not given or not hmac.compare_digest(given.encode(), token.encode()):
                return _with_headers(
                    json_error(401, "unauthorized", "Local callers must send the token from cardd's token file.",
                               {"WWW-Authenticate": "Bearer"}),
                    None,
                )
            caller = Caller(None, ALL_SCOPES, local=True)

        if request.method == "OPTIONS":
            return _with_headers(_preflight(request), origin)

        route = request.match_info.route
        scope = ROUTE_SCOPE.get(route.name or "") if route is not None else None
        if scope is not None and scope not in caller.scopes:
            return _with_headers(json_error(403, "scope_denied", f"This site may not use '{scope}'."), origin)

        request[CALLER_KEY] = caller
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            resp = json_error(e.status, "not_found" if e.status == 404 else "http_error", e.reason)
        return _with_headers(resp, origin)

    return middleware


def _preflight(request: web.Request) -> web.Response:
    resp = web.Response(status=204)
    resp.headers["Access-Control-Allow-Methods"] = "GET, POST"
    resp.headers["Access-Control-Allow-Headers"] = "Content-Type"
    resp.headers["Access-Control-Max-Age"] = "600"
    if request.headers.get("Access-Control-Request-Private-Network") == "true":
        resp.headers["Access-Control-Allow-Private-Network"] = "true"
    return resp
