# SPDX-License-Identifier: Apache-2.0
"""Citizen certificate routes: read the card's public data, sign a relying party's challenge.

Where the PIN comes from (bridge-security.md §3), in this order:

1. a reader with a PIN pad (PKCS#11 ``CKF_PROTECTED_AUTHENTICATION_PATH``): cardd never sees it;
2. ``pin`` in the body, only from a local program holding the token file (it names the relying
   party's ``origin`` in the body), or from a browser origin configured with
   ``allow_page_pin = true`` (HiPKI-style integrations; off by default);
3. cardd's own PIN page: the JavaScript client opens ``/pin?op=<id>`` as a popup in the click
   handler and sends the same id as ``pinPage``. The call then holds the reader (a second
   authenticate on it gets 409 ``reader_busy``) and waits for the PIN typed into that page
   (:mod:`cardd.api.pinpage`). A wrong PIN is shown on the page with the tries left and the call
   keeps waiting for the person's next PIN (cardd never retries one by itself); a blocked PIN
   ends it with ``pin_blocked``. The page's cancel button, closing the page (its ``pagehide``
   message, or its long-polls stopping for :data:`PAGE_HEARTBEAT_SECONDS`), the card leaving the
   reader (``card.removed`` on the bus: ``card_removed``), the requesting page going away, or
   :data:`USER_TIMEOUT_SECONDS` without a PIN end it.

Without any of these the answer is 501 ``pin_entry_unavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from cardd.api.bodies import json_body, opt_str
from cardd.api.pinbroker import PinBroker, PinOperation
from cardd.api.security import CALLER_KEY, Caller
from cardd.errors import (
    CardError,
    CardRemoved,
    InvalidInput,
    OperationCancelled,
    PinEntryUnavailable,
    PinIncorrect,
    UserCancelled,
)
from cardd.moica.service import MoicaCard, MoicaService
from cardd.readers.manager import ReaderManager
from cardd.readers.types import ReaderKind

logger = logging.getLogger(__name__)

MOICA_KEY = web.AppKey("moica", MoicaService)
PIN_BROKER_KEY = web.AppKey("pin_broker", PinBroker)

#: a person finds the card, reads the page and types the PIN (Web eID's user timeout)
USER_TIMEOUT_SECONDS = 120.0
#: the popup is opened before the request is sent; a page that has not loaded by then never will
PAGE_OPEN_SECONDS = 15.0
#: an open page long-polls without pause; this long without one means the page is gone
PAGE_HEARTBEAT_SECONDS = 5.0
_SUPERVISE_TICK = 0.25


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
    page_id = body.get("pinPage")
    if page_id is not None and pin_source is not None:
        raise InvalidInput("send either 'pin' or 'pinPage', not both")
    from cardd.moica.token import validate_nonce, validate_origin

    validate_origin(origin)
    op: PinOperation | None = None
    if page_id is not None:
        # Registered before anything else can fail, so the page can show how the call ended.
        op = request.app[PIN_BROKER_KEY].register(
            page_id,
            origin,
            opt_str(body, "reader") or "",
            action="authenticate",
            timeout=USER_TIMEOUT_SECONDS,
        )
    try:
        validate_nonce(nonce)
        result = await _authenticate(request, manager, service, body, origin, nonce, pin_source, op)
    except CardError as e:
        if op is not None:
            op.finish(e.code)
        raise
    except BaseException:
        if op is not None:
            op.finish("cancelled")
        raise
    if op is not None:
        op.finish(None)
    return web.json_response(result)


async def _authenticate(
    request: web.Request,
    manager: ReaderManager,
    service: MoicaService,
    body: dict[str, Any],
    origin: str,
    nonce: str,
    pin_source: Any,
    op: PinOperation | None,
) -> dict[str, Any]:
    reader = manager.pick_reader(opt_str(body, "reader"), kind=ReaderKind.CONTACT)
    identity = manager.reader(reader).identity
    if op is not None:
        op.reader = reader

    def job(conn: Any, cancel: Any) -> dict[str, Any]:
        card = service.read(conn, identity)
        if pin_source is not None:
            return service.authenticate(
                card, origin, nonce, pin_source, timeout=USER_TIMEOUT_SECONDS, cancel=cancel
            )
        pinpad = service.signer.find_token_for_certificate(
            card.signing.der
        ).info.protected_authentication_path
        if op is None:
            if not pinpad:
                raise PinEntryUnavailable(
                    "no PIN pad and no PIN page: open cardd's PIN page (the JavaScript client "
                    "does) and send its id as 'pinPage'"
                )
            return service.authenticate(
                card, origin, nonce, None, timeout=USER_TIMEOUT_SECONDS, cancel=cancel
            )
        op.card_ready(card.signing.profile.common_name, pinpad=pinpad)
        if pinpad:
            return service.authenticate(card, origin, nonce, None, timeout=_left(op), cancel=cancel)
        while True:
            # Each pass is one PIN the person typed; a wrong one goes back to the page.
            try:
                return service.authenticate(
                    card,
                    origin,
                    nonce,
                    lambda: op.next_pin(cancel),
                    timeout=_left(op),
                    cancel=cancel,
                )
            except PinIncorrect as e:
                logger.info(
                    "wrong PIN on the PIN page for %s (tries left: %s)", origin, e.tries_left
                )
                op.wrong_pin(e.tries_left)

    if op is None:
        result: dict[str, Any] = await manager.run(
            reader, job, name="moica.authenticate", timeout=USER_TIMEOUT_SECONDS + 5
        )
        return result
    from cardd.api.app import BUS_KEY

    bus = request.app[BUS_KEY]
    # Subscribed before the operation starts, so a card pulled at once is not missed.
    with bus.subscribe(maxsize=256) as sub:
        supervisor = asyncio.ensure_future(_supervise(request, op, sub, reader))
        try:
            result = await manager.run(
                reader, job, name="moica.authenticate", timeout=USER_TIMEOUT_SECONDS + 10
            )
        finally:
            supervisor.cancel()
    return result


def _left(op: PinOperation) -> float:
    return max(1.0, op.deadline - op.clock())


async def _supervise(request: web.Request, op: PinOperation, sub: Any, reader: str) -> None:
    """Abort ``op`` when its card or reader goes, its page goes, or its caller goes."""
    while not op.finished:
        try:
            event = await sub.get(timeout=_SUPERVISE_TICK)
        except TimeoutError:
            event = None
        if (
            event is not None
            and event.type in ("card.removed", "reader.removed")
            and event.data.get("reader") == reader
        ):
            op.abort(CardRemoved("the card left the reader while the PIN was being asked"))
            continue
        transport = request.transport
        if transport is None or transport.is_closing():
            op.abort(OperationCancelled("the requesting page went away"))
            continue
        if op.state not in ("waiting_pin", "pinpad"):
            continue
        now = op.clock()
        if not op.page_opened:
            if now - op.created > PAGE_OPEN_SECONDS:
                op.abort(UserCancelled("the PIN page was not opened"))
        elif op.page_polls == 0 and now - op.page_seen > PAGE_HEARTBEAT_SECONDS:
            op.abort(UserCancelled("the PIN page was closed"))


def add_routes(app: web.Application, route: Any) -> None:
    app[PIN_BROKER_KEY] = PinBroker()
    app.router.add_post("/v1/moica/read", moica_read, name=route("moica.read", "moica"))
    app.router.add_post(
        "/v1/moica/authenticate", moica_authenticate, name=route("moica.authenticate", "moica")
    )
