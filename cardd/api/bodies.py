# SPDX-License-Identifier: Apache-2.0
"""Request bodies: JSON objects only, so every state-changing call is preflighted by browsers.

The security middleware (cardd.api.security) has already read the body, within the size and
time limits, and checked it against the route's schema (cardd.api.routedoc); :func:`json_body`
hands that checked dict to the handler. The ``opt_*`` helpers stay for the checks a schema does
not express and for handlers called without the middleware.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from cardd.errors import InvalidInput, UnsupportedMediaType

BODY_KEY = "cardd.body"  # the same key as cardd.api.security.BODY_KEY


async def json_body(request: web.Request) -> dict[str, Any]:
    checked = request.get(BODY_KEY)
    if checked is not None:
        return dict(checked)  # a copy: handlers may drop values (the PIN) from theirs
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the request body as application/json")
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body


def opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidInput(f"'{key}' must be a non-empty string")
    return value


def opt_bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"'{key}' must be true or false")
    return value


def opt_int(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"'{key}' must be an integer from {lo} to {hi}")
    return value
