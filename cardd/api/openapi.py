# SPDX-License-Identifier: Apache-2.0
"""The OpenAPI 3.1 description of the localhost API, served at ``GET /v1/openapi.json``.

Built from two sources that the running code uses too, so the document cannot drift from it:
the route records (cardd.api.routedoc: body schemas the middleware enforces, answers) and the
scopes in ``security.ROUTE_SCOPE``. The records of cardd's own routes are registered here, at
import time; other modules register theirs with ``routedoc.describe`` (see its docstring).
Only routes the app actually has are documented; tests/integration/test_openapi.py checks
the document against the router in both directions and validates it as OpenAPI 3.1.

Status codes: every route may answer 401/403/421/429 (security layer) and every POST route
400/408/413/415 (bodies); these are added to each operation. A second card operation on a
busy reader answers 409 with the stable code ``reader_busy`` (bridge-security.md §2.8 calls it
"busy"; cardd's code names what is busy, and the CLI's exit code 8 uses the same name).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from cardd import __version__
from cardd.api.routedoc import ROUTE_DOCS, Reply, RouteDoc, describe
from cardd.api.schema import BodySchema, Field

# -- component schemas ------------------------------------------------------------------------

_STR_OR_NULL = {"type": ["string", "null"]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "stable code, e.g. reader_busy"},
                    "message": {"type": "string", "description": "what to tell the person"},
                    "triesLeft": {
                        "type": ["integer", "null"],
                        "description": "pin_incorrect only: PIN tries left",
                    },
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "backends", "readers"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "version": {"type": "string"},
            "backends": {"type": "object", "additionalProperties": {"type": "string"}},
            "readers": {"type": "integer", "minimum": 0},
        },
    },
    "Reader": {
        "type": "object",
        "required": ["name", "backend", "kind", "cardPresent", "atr", "cardType", "busy"],
        "properties": {
            "name": {"type": "string"},
            "backend": {"type": "string"},
            "kind": {"type": "string", "enum": ["contact", "contactless", "serial", "unknown"]},
            "cardPresent": {"type": "boolean"},
            "atr": {**_STR_OR_NULL, "description": "hex, upper case"},
            "cardType": _STR_OR_NULL,
            "cardLabel": _STR_OR_NULL,
            "busy": {"type": "boolean"},
        },
    },
    "Readers": {
        "type": "object",
        "required": ["readers"],
        "properties": {
            "readers": {"type": "array", "items": {"$ref": "#/components/schemas/Reader"}}
        },
    },
    "UidForms": {
        "type": "object",
        "required": ["hex", "hexReversed", "decLE", "decBE", "length"],
        "properties": {
            "hex": {"type": "string"},
            "hexReversed": {"type": "string"},
            "decLE": {"type": "string", "description": "the chip number (內碼)"},
            "decBE": {"type": "string"},
            "length": {"type": "integer", "enum": [4, 7, 10]},
        },
    },
    "Tap": {
        "type": "object",
        "required": ["reader", "uid"],
        "properties": {
            "reader": {"type": "string"},
            "uid": {"$ref": "#/components/schemas/UidForms"},
            "randomUid": {"type": "boolean"},
            "atr": _STR_OR_NULL,
            "cardType": _STR_OR_NULL,
            "cardLabel": _STR_OR_NULL,
        },
    },
    "StudentCardRecord": {
        "type": "object",
        "required": ["uid", "record", "libraryNumber", "maskedId", "suffix", "ledgerState"],
        "properties": {
            "uid": {"$ref": "#/components/schemas/UidForms"},
            "record": {"type": "string", "description": "valid, empty, corrupt, foreign, …"},
            "reason": _STR_OR_NULL,
            "libraryNumber": {**_STR_OR_NULL, "description": "masked"},
            "maskedId": _STR_OR_NULL,
            "suffix": {"type": ["integer", "null"]},
            "ledgerState": _STR_OR_NULL,
            "issuedAt": {**_STR_OR_NULL, "description": "ISO 8601"},
        },
    },
    "Burn": {
        "type": "object",
        "required": ["status", "libraryNumber", "suffix", "superseded", "uid"],
        "properties": {
            "status": {"type": "string"},
            "libraryNumber": {"type": "string", "description": "masked"},
            "suffix": {"type": "integer"},
            "superseded": {**_STR_OR_NULL, "description": "masked"},
            "uid": {"$ref": "#/components/schemas/UidForms"},
        },
    },
    "LostReport": {
        "type": "object",
        "required": ["libraryNumber", "state"],
        "properties": {"libraryNumber": {"type": "string"}, "state": {"type": "string"}},
    },
    "MoicaCertificate": {
        "type": "object",
        "required": ["certificate", "usage", "notBefore", "notAfter"],
        "properties": {
            "certificate": {"type": "string", "description": "base64 DER"},
            "usage": {"type": "string", "enum": ["sign", "encrypt"]},
            "notBefore": {"type": "string"},
            "notAfter": {"type": "string"},
            "serial": {"type": "string"},
            "generation": _STR_OR_NULL,
        },
    },
    "MoicaCard": {
        "type": "object",
        "required": ["reader", "cardType", "generation", "certificates"],
        "properties": {
            "reader": {"type": "string"},
            "cardType": {"type": "string"},
            "generation": {"type": "string"},
            "cardNumber": _STR_OR_NULL,
            "holderName": _STR_OR_NULL,
            "idLast4": _STR_OR_NULL,
            "certificates": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/MoicaCertificate"},
            },
        },
    },
    "AuthToken": {
        "type": "object",
        "required": ["format", "unverifiedCertificate", "algorithm", "signature", "appVersion"],
        "properties": {
            "format": {"type": "string"},
            "unverifiedCertificate": {"type": "string"},
            "algorithm": {"type": "string"},
            "signature": {"type": "string"},
            "appVersion": {"type": "string"},
        },
    },
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# -- body schemas of cardd's own routes (enforced by the security middleware) -----------------

_READER = Field(
    "reader",
    "string",
    "reader name; default: the one reader that fits",
    min_length=1,
    max_length=200,
)

BODIES = {
    "rfid.wait-tap": BodySchema(
        (
            _READER,
            Field(
                "timeoutMs",
                "integer",
                "how long to wait for a tap (default 15000)",
                minimum=100,
                maximum=120000,
            ),
        )
    ),
    "student-card.read": BodySchema((_READER,)),
    "student-card.burn": BodySchema(
        (
            Field(
                "idNumber",
                "string",
                "national ID or resident certificate number",
                required=True,
                min_length=1,
                max_length=200,
            ),
            Field("reissue", "boolean", "replace the holder's working card (next suffix)"),
            Field("confirmOverwrite", "boolean", "overwrite a card that holds another record"),
            _READER,
        )
    ),
    "student-card.report-lost": BodySchema(
        (
            Field(
                "libraryNumber",
                "string",
                "the 12-character library number",
                required=True,
                min_length=1,
                max_length=200,
            ),
        )
    ),
    "moica.read": BodySchema((_READER,)),
    "moica.authenticate": BodySchema(
        (
            Field(
                "nonce",
                "string",
                "the relying party's challenge: base64, 44 to 128 characters",
                required=True,
                max_length=256,
            ),
            _READER,
            Field(
                "origin",
                "string",
                "local callers only: the relying party's https origin",
                min_length=1,
                max_length=200,
            ),
            Field(
                "pin",
                "string",
                "only for origins with allow_page_pin (HiPKI-style pages)",
                min_length=1,
                max_length=200,
            ),
        )
    ),
}

_CARD_ERRORS = {
    404: "no_reader, no_card",
    409: "reader_busy (another operation holds the reader), card_removed",
    422: "card_not_supported and other card states",
    502: "the card answered wrongly (apdu_failed, card_data_invalid)",
    503: "reader_unavailable, pcsc_unavailable",
    504: "timeout, card_mute",
}


def _register_core_routes() -> None:
    describe(
        "health",
        "GET",
        "/v1/health",
        "Version, backends and their state",
        responses={200: Reply("cardd is running", ref("Health"))},
        tags=("status",),
    )
    describe(
        "readers",
        "GET",
        "/v1/readers",
        "Readers, cards, ATRs and card types",
        responses={200: Reply("The readers", ref("Readers"))},
        tags=("readers",),
    )
    describe(
        "events",
        "GET",
        "/v1/events",
        "Reader and card events (Server-Sent Events)",
        description="Event names: hello, reader.added, reader.removed, card.inserted, "
        "card.removed, tag.tapped, operation.started, operation.finished, … "
        "Heartbeat comments every 15 s. Counts as an open request while connected.",
        responses={
            200: Reply("An event stream", {"type": "string"}, content_type="text/event-stream")
        },
        tags=("readers",),
    )
    describe(
        "ws",
        "GET",
        "/v1/ws",
        "The same events over a WebSocket",
        description="Origin and scope are checked before the handshake.",
        responses={101: Reply("Switching to the WebSocket protocol", None)},
        errors={400: "not a WebSocket handshake"},
        tags=("readers",),
    )
    describe(
        "openapi",
        "GET",
        "/v1/openapi.json",
        "This document",
        responses={200: Reply("OpenAPI 3.1", {"type": "object"})},
        tags=("status",),
    )
    describe(
        "rfid.wait-tap",
        "POST",
        "/v1/rfid/wait-tap",
        "Wait for the next contactless tap",
        body=BODIES["rfid.wait-tap"],
        responses={200: Reply("The tap: reader, UID forms, ATR, card type", ref("Tap"))},
        errors={404: "no_reader", 504: "timeout: no card was tapped in time"},
        tags=("rfid",),
    )
    describe(
        "student-card.read",
        "POST",
        "/v1/student-card/read",
        "Read the library-number record of a student card",
        body=BODIES["student-card.read"],
        responses={
            200: Reply("The record (numbers masked) and its ledger state", ref("StudentCardRecord"))
        },
        errors=_CARD_ERRORS,
        tags=("rfid",),
    )
    describe(
        "student-card.burn",
        "POST",
        "/v1/student-card/burn",
        "Burn a library number onto a student card",
        body=BODIES["student-card.burn"],
        responses={
            200: Reply("The burned number (masked), suffix, what it superseded", ref("Burn"))
        },
        errors={
            **_CARD_ERRORS,
            409: "reader_busy, card_removed, already_issued, "
            "card_in_use, ledger_conflict, burn_pending",
            503: "ledger_unavailable, reader_unavailable",
        },
        tags=("rfid",),
    )
    describe(
        "student-card.report-lost",
        "POST",
        "/v1/student-card/report-lost",
        "Report a library number lost",
        body=BODIES["student-card.report-lost"],
        responses={200: Reply("The number's new state", ref("LostReport"))},
        errors={404: "unknown_number", 409: "invalid_transition", 503: "ledger_unavailable"},
        tags=("rfid",),
    )
    describe(
        "moica.read",
        "POST",
        "/v1/moica/read",
        "Read a citizen certificate card's public data (no PIN)",
        body=BODIES["moica.read"],
        responses={200: Reply("Card type, number, holder, certificates", ref("MoicaCard"))},
        errors=_CARD_ERRORS,
        tags=("moica",),
    )
    describe(
        "moica.authenticate",
        "POST",
        "/v1/moica/authenticate",
        "Sign the relying party's challenge with the card (Web eID style token)",
        description="The signed origin is the browser's Origin header, never the body. "
        "cardd collects the PIN itself (its own page or a PIN-pad reader).",
        body=BODIES["moica.authenticate"],
        responses={200: Reply("The authentication token", ref("AuthToken"))},
        errors={
            **_CARD_ERRORS,
            422: "pin_incorrect (with triesLeft), pin_blocked",
            499: "user_cancelled",
            501: "pin_entry_unavailable",
            503: "pkcs11_module_missing, reader_unavailable",
        },
        tags=("moica",),
    )


_register_core_routes()

# -- the document -----------------------------------------------------------------------------

_COMMON_ERRORS = {
    401: "unauthorized: a local program without the right bearer token",
    403: "origin_not_allowed, origin_required (browser request without Origin), scope_denied",
    421: "misdirected: the Host header is not cardd's loopback address",
    429: "too_many_connections: this origin has too many requests open",
}
_BODY_ERRORS = {
    400: "invalid_input (names the key) and other input errors",
    408: "request_timeout: the body was sent too slowly",
    413: "body_too_large",
    415: "unsupported_media_type: send Content-Type: application/json",
}


def _operation(doc: RouteDoc, scope: str | None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": doc.name, "summary": doc.summary}
    text = doc.description
    if not doc.public:
        who = f"Scope `{scope}`." if scope else "Any allowed caller."
        text = f"{who} {text}".strip()
    if text:
        op["description"] = text
    if doc.tags:
        op["tags"] = list(doc.tags)
    if scope:
        op["x-cardd-scope"] = scope
    if doc.public:
        op["security"] = []
    params = re.findall(r"\{([^}:]+)(?::[^}]*)?\}", doc.path)  # aiohttp's {name} / {name:regex}
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    if doc.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": doc.body.json_schema()}},
        }
    responses: dict[str, Any] = {}
    for status, reply in sorted(doc.responses.items()):
        entry: dict[str, Any] = {"description": reply.description}
        if reply.schema is not None or reply.content_type != "application/json":
            schema = dict(reply.schema) if reply.schema is not None else {}
            entry["content"] = {reply.content_type: {"schema": schema}}
        if reply.headers:
            entry["headers"] = {
                k: {"description": v, "schema": {"type": "string"}}
                for k, v in reply.headers.items()
            }
        responses[str(status)] = entry
    errors = dict(_COMMON_ERRORS) if not doc.public else {421: _COMMON_ERRORS[421]}
    if doc.body is not None or doc.method not in ("GET", "HEAD"):
        errors.update(_BODY_ERRORS)
    errors.update(doc.errors)
    for status, text in sorted(errors.items()):
        responses.setdefault(
            str(status),
            {
                "description": text,
                "content": {"application/json": {"schema": ref("Error")}},
            },
        )
    op["responses"] = responses
    return op


def build_document(app: web.Application, port: int) -> dict[str, Any]:
    """The OpenAPI document of the routes ``app`` has (named resources with a record)."""
    from cardd.api.security import ROUTE_SCOPE

    named = app.router.named_resources()
    paths: dict[str, dict[str, Any]] = {}
    for name, doc in sorted(ROUTE_DOCS.items()):
        if name not in named:
            continue
        paths.setdefault(doc.path, {})[doc.method.lower()] = _operation(doc, ROUTE_SCOPE.get(name))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cardd localhost API",
            "version": __version__,
            "description": (
                "Card readers for library and school web pages. Browser pages call from an "
                "origin on cardd's allowlist (exact match, per-origin scopes) and send no "
                "credentials; local programs send no Origin and the bearer token from cardd's "
                'token file. Errors are {"error": {"code", "message"}} with a stable code.'
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": f"http://127.0.0.1:{port}"}],
        "security": [{"bearerToken": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Local programs: the token from cardd's token file "
                    "(`cardd token show`). Browser pages are identified by Origin instead.",
                }
            },
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    from cardd.api.app import CONFIG_KEY

    # Built per request (well under a millisecond); the app is frozen once it runs.
    return web.json_response(build_document(request.app, request.app[CONFIG_KEY].api.port))
