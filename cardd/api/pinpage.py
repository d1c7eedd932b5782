# SPDX-License-Identifier: Apache-2.0
"""cardd's own PIN page and the JavaScript client files (bridge-security.md §3, product.md).

Routes:

=====================================  ==============================================================
``GET /pin?op=<id>``                   the page (public: a popup navigation carries no Origin)
``POST /v1/pin/<id>/state``            long-poll for the operation's state (also the heartbeat)
``POST /v1/pin/<id>/submit``           the PIN, straight to the waiting operation
``POST /v1/pin/<id>/cancel``           the cancel button, and ``pagehide`` when the popup closes
``GET /v1/client/cardd.js``            the ES module client for relying-party pages (public)
``GET /v1/client/cardd.d.ts``          its TypeScript declarations (public)
=====================================  ==============================================================

Handshake. The relying party's page, in its click handler, makes a random id, opens
``http://127.0.0.1:PORT/pin?op=<id>`` as a popup and then sends ``POST /v1/moica/authenticate``
with ``"pinPage": "<id>"`` (cardd.js does all three). The page request may arrive first, so
``GET /pin`` waits up to :data:`PAGE_WAIT_SECONDS` for the operation to be registered. Each page
load gets a fresh 256-bit secret (a reload disables the previous page's), embedded in the HTML;
the three POSTs must carry it and come from cardd's own origin (the security middleware gives
only that origin the ``pin.submit`` scope; the handlers check ``Origin`` against ``Host`` again).

Isolation from the relying party, which knows the id and opened the window:

* ``Cross-Origin-Opener-Policy: same-origin`` puts the page in its own browsing context group:
  the opener's handle goes dead (``closed``), it cannot script, read or navigate the page;
* ``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``: it cannot be framed;
* the CSP allows only this response's own inline script and style (a fresh nonce per response),
  ``connect-src 'self'``, no forms to elsewhere, no base URI; ``Cache-Control: no-store``;
* ``Cross-Origin-Resource-Policy: same-origin``: no other site can load it as a resource; a
  non-navigation ``GET`` (``Sec-Fetch-Dest`` other than ``document``) is refused.

What the page shows (origin, holder, action, reader) comes from the operation record via the
state call, never from the URL. The PIN is posted as JSON (the only copies are the request bytes
and the parsed ``str``, which Python cannot wipe), turned into a ``bytearray`` at once and handed
to the worker, which wipes it after C_Login; it is never logged or stored. A residual risk the
page cannot remove: an allowed site could draw a look-alike PIN dialog; users should look for
``127.0.0.1`` in the popup's address bar (the page says so).

The client script is public code: it is served to requests without Origin and to allowed origins
(with CORS and ``Cross-Origin-Resource-Policy: cross-origin``, so ``<script type="module">`` and
``import()`` work from them); a page of another origin gets 403 ``origin_not_allowed``.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import re
import secrets
from importlib import resources
from typing import Any

from aiohttp import web

from cardd.api.bodies import json_body
from cardd.api.errors import json_error
from cardd.api.pinbroker import OP_ID_RE, PinBroker, PinOperation
from cardd.api.routedoc import ROUTE_DOCS, Reply, describe
from cardd.api.schema import BodySchema, Field
from cardd.errors import InvalidInput, UserCancelled

logger = logging.getLogger(__name__)

#: the popup is opened before the authenticate call is sent: wait this long for its record
PAGE_WAIT_SECONDS = 10.0
#: one long-poll answers after this long without a change (the page asks again at once)
POLL_SECONDS = 8.0
_POLL_TICK = 0.5
_PIN_RE = re.compile(r"[0-9]{6,8}")
SCOPE = "pin.submit"

_STATIC = resources.files("cardd.api") / "static"


def _static(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


_PAGE = _static("pin.html")
_PAGE_SCRIPT = _static("pin.js")
_PAGE_STYLE = _static("pin.css")
CLIENT_JS = _static("cardd.js")
CLIENT_DTS = _static("cardd.d.ts")


def _broker(request: web.Request) -> PinBroker:
    from cardd.api.moica import PIN_BROKER_KEY

    return request.app[PIN_BROKER_KEY]


def _page_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        ),
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }


async def pin_page(request: web.Request) -> web.Response:
    dest = request.headers.get("Sec-Fetch-Dest")
    if dest is not None and dest != "document":
        # an <iframe>, <img>, <script> or fetch() of the page by some other page
        return json_error(403, "navigation_required", "Open this page as a window.")
    op_id = request.query.get("op", "")
    op = await _broker(request).wait_for(op_id, PAGE_WAIT_SECONDS) if op_id else None
    secret = op.open_page() if op is not None else ""
    nonce = secrets.token_urlsafe(18)
    text = (
        _PAGE.replace("{{STYLE}}", _PAGE_STYLE)
        .replace("{{SCRIPT}}", _PAGE_SCRIPT)
        .replace("{{NONCE}}", nonce)
        .replace("{{OP}}", html.escape(op_id if op is not None else "", quote=True))
        .replace("{{SECRET}}", secret)
    )
    return web.Response(
        text=text, content_type="text/html", charset="utf-8", headers=_page_headers(nonce)
    )


def _operation(request: web.Request, body: dict[str, Any]) -> PinOperation:
    """The operation the page names, if the caller is a page cardd served for it."""
    origin = request.headers.get("Origin")
    if origin != f"http://{request.host}":  # same-origin only (the middleware checked the Host)
        raise _Refused(403, "origin_not_allowed", "Only cardd's own page may do this.")
    op_id = request.match_info["op"]
    op = _broker(request).get(op_id) if OP_ID_RE.fullmatch(op_id) else None
    if op is None or not op.secret_ok(body.get("secret")):
        # one answer for "no such operation" and "wrong secret": nothing to probe
        raise _Refused(404, "not_found", "This PIN request does not exist or has ended.")
    return op


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.response = json_error(status, code, message)


async def pin_state(request: web.Request) -> web.Response:
    body = await json_body(request)
    try:
        op = _operation(request, body)
    except _Refused as e:
        return e.response
    version = body.get("version", -1)
    op.page_polls += 1
    op.page_seen = op.clock()
    try:
        waited = 0.0
        snap = op.snapshot()
        while snap.version == version and waited < POLL_SECONDS:
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the page went away; its heartbeat stops counting now
            snap = await op.changed_since(version, _POLL_TICK)
            waited += _POLL_TICK
    finally:
        op.page_polls -= 1
        op.page_seen = op.clock()
    return web.json_response(snap.to_dict())


async def pin_submit(request: web.Request) -> web.Response:
    body = await json_body(request)
    try:
        op = _operation(request, body)
    except _Refused as e:
        return e.response
    pin = body.pop("pin", None)
    if not isinstance(pin, str) or not _PIN_RE.fullmatch(pin):
        # checked here so a malformed PIN never reaches the card (it may cost a try)
        return json_error(422, "pin_format", "PIN 碼必須是 6 到 8 位數字。")
    buffer = bytearray(pin, "ascii")
    del pin
    try:
        op.submit(buffer)  # ours no more: the worker wipes it after C_Login
    except InvalidInput:
        return json_error(409, "pin_not_expected", "現在不能輸入 PIN 碼。")
    return web.json_response({"state": "checking"}, status=202)


async def pin_cancel(request: web.Request) -> web.Response:
    body = await json_body(request)
    try:
        op = _operation(request, body)
    except _Refused as e:
        return e.response
    if op.abort(UserCancelled("cancelled on cardd's PIN page")):
        logger.info("PIN request for %s cancelled on the PIN page", op.origin)
    return web.json_response({"state": op.state})


def _client_file(text: str, content_type: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        from cardd.api.app import CONFIG_KEY

        origin = request.headers.get("Origin")
        headers = {
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Cache-Control": "no-cache",
            "Vary": "Origin",
        }
        if origin is not None:
            if request.app[CONFIG_KEY].api.origin_policy(origin) is None:
                return json_error(
                    403, "origin_not_allowed", "This site is not allowed to use cardd."
                )
            headers["Access-Control-Allow-Origin"] = origin
        return web.Response(text=text, content_type=content_type, charset="utf-8", headers=headers)

    return handler


_SECRET = Field(
    "secret",
    "string",
    "The secret of this page load (in the page's HTML).",
    required=True,
    min_length=16,
    max_length=128,
)
_PAGE_ONLY = {403: "Not cardd's own page.", 404: "No such PIN request, or a wrong secret."}

describe(
    "pin.page",
    "GET",
    "/pin",
    "cardd's PIN page (opened as a popup by cardd.js)",
    description="Query `op`: the id the JavaScript client also sends as `pinPage`.",
    responses={200: Reply("The page", content_type="text/html", schema=None)},
    errors={403: "Not a top-level navigation."},
    public=True,
    tags=("pin",),
)
describe(
    "pin.state",
    "POST",
    "/v1/pin/{op}/state",
    "The PIN request's state (long-poll; the page's heartbeat)",
    body=BodySchema(
        (
            _SECRET,
            Field(
                "version", "integer", "The last version seen (-1 first).", minimum=-1, maximum=2**31
            ),
        )
    ),
    responses={
        200: Reply(
            "State: origin, holder, action, tries left, outcome",
            schema={
                "type": "object",
                "required": ["version", "state", "origin"],
                "properties": {
                    "version": {"type": "integer"},
                    "state": {
                        "enum": ["reading", "waiting_pin", "checking", "pinpad", "done", "failed"]
                    },
                    "origin": {"type": "string"},
                    "reader": {"type": "string"},
                    "holderName": {"type": ["string", "null"]},
                    "action": {"type": "string"},
                    "triesLeft": {"type": ["integer", "null"]},
                    "error": {"type": ["string", "null"]},
                    "remainingSeconds": {"type": "integer"},
                },
            },
        )
    },
    errors=_PAGE_ONLY,
    tags=("pin",),
)
describe(
    "pin.submit",
    "POST",
    "/v1/pin/{op}/submit",
    "The PIN typed on cardd's page",
    body=BodySchema(
        (_SECRET, Field("pin", "string", "6–8 digits", required=True, min_length=1, max_length=16))
    ),
    responses={
        202: Reply(
            "Taken; the state call tells the outcome",
            schema={"type": "object", "properties": {"state": {"type": "string"}}},
        )
    },
    errors={**_PAGE_ONLY, 409: "No PIN is expected now.", 422: "Not 6–8 digits."},
    tags=("pin",),
)
describe(
    "pin.cancel",
    "POST",
    "/v1/pin/{op}/cancel",
    "Cancel the PIN request (cancel button, page closed)",
    body=BodySchema((_SECRET,)),
    responses={
        200: Reply(
            "Cancelled (or already over)",
            schema={"type": "object", "properties": {"state": {"type": "string"}}},
        )
    },
    errors=_PAGE_ONLY,
    tags=("pin",),
)
describe(
    "client.js",
    "GET",
    "/v1/client/cardd.js",
    "The JavaScript client (ES module)",
    responses={200: Reply("The script", content_type="text/javascript", schema=None)},
    public=True,
    tags=("client",),
)
describe(
    "client.dts",
    "GET",
    "/v1/client/cardd.d.ts",
    "TypeScript declarations of the client",
    responses={200: Reply("The declarations", content_type="application/typescript", schema=None)},
    public=True,
    tags=("client",),
)


PIN_PAGE_FIELD = Field(
    "pinPage",
    "string",
    "the id of cardd's PIN page the JavaScript client opened (/pin?op=<id>)",
    min_length=22,
    max_length=64,
    pattern=r"^[A-Za-z0-9_-]+$",
)


def _accept_pin_page_id() -> None:
    """Add ``pinPage`` to the body schema of ``moica.authenticate`` if its record lacks it.

    That record lives in cardd.api.openapi with the other core routes; the key belongs to the
    PIN page's handshake, so this module makes sure the (strict) schema accepts it, and the
    OpenAPI document shows it, whichever module is edited first.
    """
    import cardd.api.openapi  # noqa: F401 - registers the core routes' records

    doc = ROUTE_DOCS.get("moica.authenticate")
    if doc is None or doc.body is None or any(f.name == "pinPage" for f in doc.body.fields):
        return
    ROUTE_DOCS[doc.name] = dataclasses.replace(
        doc, body=BodySchema((*doc.body.fields, PIN_PAGE_FIELD))
    )


def add_routes(app: web.Application, route: Any) -> None:
    _accept_pin_page_id()
    app.router.add_get("/pin", pin_page, name=route("pin.page"))
    app.router.add_post("/v1/pin/{op}/state", pin_state, name=route("pin.state", SCOPE))
    app.router.add_post("/v1/pin/{op}/submit", pin_submit, name=route("pin.submit", SCOPE))
    app.router.add_post("/v1/pin/{op}/cancel", pin_cancel, name=route("pin.cancel", SCOPE))
    app.router.add_get(
        "/v1/client/cardd.js", _client_file(CLIENT_JS, "text/javascript"), name=route("client.js")
    )
    app.router.add_get(
        "/v1/client/cardd.d.ts",
        _client_file(CLIENT_DTS, "application/typescript"),
        name=route("client.dts"),
    )
