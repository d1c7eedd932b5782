# SPDX-License-Identifier: Apache-2.0
"""Contactless routes: taps, student-card records, burning and lost cards."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cardd.api.bodies import json_body, opt_bool, opt_int, opt_str
from cardd.api.security import CALLER_KEY, Caller
from cardd.errors import OperationTimeout
from cardd.events import EventBus
from cardd.readers.manager import ReaderManager
from cardd.readers.types import ReaderKind
from cardd.rfid.idnumber import mask_id
from cardd.rfid.station import RfidStation
from cardd.rfid.uid import uid_forms

if TYPE_CHECKING:  # the burn machinery loads with the station's first student-card operation
    from cardd.rfid.burn import BurnOutcome, CardRecord

STATION_KEY = web.AppKey("rfid_station", RfidStation)


def _managers(request: web.Request) -> tuple[ReaderManager, EventBus, RfidStation]:
    from cardd.api.app import BUS_KEY, MANAGER_KEY

    return request.app[MANAGER_KEY], request.app[BUS_KEY], request.app[STATION_KEY]


def _operator(request: web.Request) -> str:
    caller: Caller = request[CALLER_KEY]
    return caller.origin or "local"


async def wait_tap(request: web.Request) -> web.Response:
    manager, bus, _ = _managers(request)
    body = await json_body(request)
    reader = opt_str(body, "reader")
    timeout_ms = opt_int(body, "timeoutMs", 15000, 100, 120000)
    if reader is not None:
        manager.reader(reader)  # NoReader now rather than a silent timeout
    with bus.subscribe(maxsize=64) as sub:
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                async for event in sub:
                    if event.type == "tag.tapped" and reader in (None, event.data["reader"]):
                        return web.json_response(dict(event.data))
        except TimeoutError:
            pass
    raise OperationTimeout(f"no card was tapped within {timeout_ms} ms")


def _record_json(read: CardRecord) -> dict[str, Any]:
    number = read.record.number
    entry = read.ledger
    return {
        "uid": uid_forms(read.uid).to_dict(),
        "record": read.record.state.value,
        "reason": read.record.reason,
        "libraryNumber": mask_id(str(number)) if number else None,
        "maskedId": mask_id(number.id_number) if number else None,
        "suffix": number.suffix if number else None,
        "ledgerState": entry.state.value if entry else None,
        "issuedAt": entry.issued_at.isoformat() if entry and entry.issued_at else None,
    }


async def student_card_read(request: web.Request) -> web.Response:
    manager, _, station = _managers(request)
    body = await json_body(request)
    reader = manager.pick_reader(opt_str(body, "reader"), kind=ReaderKind.CONTACTLESS)
    cards = await asyncio.to_thread(lambda: station.cards)
    read = await manager.run(reader, lambda c, e: cards.read(c, reader=reader), name="student-card.read")
    return web.json_response(_record_json(read))


def _burn_json(out: BurnOutcome) -> dict[str, Any]:
    return {
        "status": out.status,
        # The page asked for this burn with the full ID; the number it gets back is masked all
        # the same: the answer may end up in page logs and analytics.
        "libraryNumber": mask_id(out.number),
        "suffix": out.suffix,
        "superseded": mask_id(out.superseded) if out.superseded else None,
        "uid": uid_forms(out.uid).to_dict(),
    }


async def student_card_burn(request: web.Request) -> web.Response:
    manager, _, station = _managers(request)
    body = await json_body(request)
    id_number = opt_str(body, "idNumber")
    if id_number is None:
        from cardd.errors import InvalidInput

        raise InvalidInput("'idNumber' is required")
    reissue = opt_bool(body, "reissue")
    confirm = opt_bool(body, "confirmOverwrite")
    reader = manager.pick_reader(opt_str(body, "reader"), kind=ReaderKind.CONTACTLESS)
    cards = await asyncio.to_thread(lambda: station.cards)
    operator = _operator(request)
    out = await manager.run(
        reader,
        lambda c, e: cards.burn(c, id_number, reissue=reissue, operator=operator,
                                confirm_overwrite=confirm, reader=reader, cancel=e),
        name="student-card.burn",
    )
    return web.json_response(_burn_json(out))


async def student_card_report_lost(request: web.Request) -> web.Response:
    _, bus, station = _managers(request)
    body = await json_body(request)
    number = opt_str(body, "libraryNumber")
    if number is None:
        from cardd.errors import InvalidInput

        raise InvalidInput("'libraryNumber' is required")
    operator = _operator(request)
    record = await asyncio.to_thread(lambda: station.cards.report_lost(number, operator=operator))
    bus.publish("student-card.lost", {"libraryNumber": mask_id(record.number)})
    return web.json_response({"libraryNumber": mask_id(record.number), "state": record.state.value})


def add_routes(app: web.Application, route: Any) -> None:
    app.router.add_post("/v1/rfid/wait-tap", wait_tap, name=route("rfid.wait-tap", "rfid:read"))
    app.router.add_post("/v1/student-card/read", student_card_read, name=route("student-card.read", "rfid:read"))
    app.router.add_post("/v1/student-card/burn", student_card_burn, name=route("student-card.burn", "rfid:write"))
    app.router.add_post(
        "/v1/student-card/report-lost", student_card_report_lost,
        name=route("student-card.report-lost", "rfid:write"),
    )
