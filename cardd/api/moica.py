# SPDX-License-Identifier: Apache-2.0
"""Citizen certificate routes: read the card's public data, sign a relying party's challenge."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cardd.api.bodies import json_body, opt_str
from cardd.api.security import CALLER_KEY, Caller
from cardd.errors import InvalidInput, PinEntryUnavailable
from cardd.moica.service import MoicaCard, MoicaService
from cardd.readers.manager import ReaderManager
from cardd.readers.types import ReaderKind

MOICA_KEY = web.AppKey("moica", MoicaService)


def _parts(request: web.Request) -> tuple[ReaderManager, MoicaService]:
    from cardd.api.app import MANAGER_KEY

    return request.app[MANAGER_KEY], request.app[MOICA_KEY]


async def _read_card(request: web.Request, reader_name: str | None) -> tuple[str, MoicaCard]:
    manager, service = _parts(request)
    reader = manager.pick_reader(reader_name, kind=ReaderKind.CONTACT)
    identity = manager.reader(reader).identity
    card = await manager.run(reader, lambda c, e: service.read(c, identity), name="moica.read")
    return reader, card


async def moica_read(request: web.Request) -> web.Response:
    body = await json_body(request)
    reader, card = await _read_card(request, opt_str(body, "reader"))
    return web.json_response({"reader": reader, **card.to_dict()})


def _origin_for(request: web.Request, caller: Caller, body: dict[str, Any]) -> str:
    """The origin the signature binds: the browser's Origin header, never the page's body.

    A local program holding the token file (no Origin header) names the relying party's origin in
    the body; it must be https (cardd.moica.token checks the form when signing).
    """
    if caller.origin is not None:
        return caller.origin
    origin = opt_str(body, "origin")
    if origin is None:
        raise InvalidInput("local callers must name the relying party's 'origin' (https)")
    return origin


def _pin_source(request: web.Request, caller: Caller, body: dict[str, Any]) -> Any:
    pin = body.get("pin")
    if pin is None:
        return None
    if caller.origin is not None:
        from cardd.api.app import CONFIG_KEY

        policy = request.app[CONFIG_KEY].api.origin_policy(caller.origin)
        if policy is None or not policy.allow_page_pin:
            raise InvalidInput("this site may not send the PIN; cardd asks for it itself")
    if not isinstance(pin, str):
        raise InvalidInput("'pin' must be a string")
    buffer = bytearray(pin.encode("ascii", "replace"))
    body["pin"] = None  # drop our reference to the str as soon as we can

    def source() -> bytearray:
        return buffer

    return source


async def moica_authenticate(request: web.Request) -> web.Response:
    manager, service = _parts(request)
    body = await json_body(request)
    caller: Caller = request[CALLER_KEY]
    nonce = body.get("nonce")
    if not isinstance(nonce, str):
        raise InvalidInput("'nonce' is required (the relying party's challenge, base64)")
    origin = _origin_for(request, caller, body)
    pin_source = _pin_source(request, caller, body)
    from cardd.moica.token import validate_nonce, validate_origin

    validate_origin(origin)
    validate_nonce(nonce)
    reader = manager.pick_reader(opt_str(body, "reader"), kind=ReaderKind.CONTACT)
    identity = manager.reader(reader).identity
    timeout = 120.0  # a person types a PIN (on a pad) within this

    def job(conn: Any, cancel: Any) -> dict[str, Any]:
        card = service.read(conn, identity)
        if pin_source is None:
            token = service.signer.find_token_for_certificate(card.signing.der)
            if not token.info.protected_authentication_path:
                raise PinEntryUnavailable(
                    "cardd's PIN page is not available yet: use a PIN-pad reader or the CLI"
                )
        return service.authenticate(card, origin, nonce, pin_source, timeout=timeout, cancel=cancel)

    result = await manager.run(reader, job, name="moica.authenticate", timeout=timeout + 5)
    return web.json_response(result)


def add_routes(app: web.Application, route: Any) -> None:
    app.router.add_post("/v1/moica/read", moica_read, name=route("moica.read", "moica"))
    app.router.add_post("/v1/moica/authenticate", moica_authenticate, name=route("moica.authenticate", "moica"))
