# SPDX-License-Identifier: Apache-2.0
"""The aiohttp application: routes, event streams and wiring to the reader manager."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from cardd import __version__, metrics
from cardd.api.metrics import add_routes as add_metrics_routes
from cardd.api.moica import MOICA_KEY
from cardd.api.moica import add_routes as add_moica_routes
from cardd.api.rfid import STATION_KEY
from cardd.api.rfid import add_routes as add_rfid_routes
from cardd.api.security import ROUTE_SCOPE, TokenStore, add_security_headers, security_middleware
from cardd.config import Config
from cardd.events import EventBus
from cardd.moica.service import MoicaService
from cardd.readers.manager import ReaderManager
from cardd.rfid.station import RfidStation

logger = logging.getLogger(__name__)

MANAGER_KEY = web.AppKey("manager", ReaderManager)
CONFIG_KEY = web.AppKey("config", Config)
BUS_KEY = web.AppKey("bus", EventBus)
#: SSE keep-alive comment interval; keeps proxies and the browser's idle timers quiet
HEARTBEAT_SECONDS = 15.0


def _route(name: str, scope: str | None = None) -> str:
    if scope is not None:
        ROUTE_SCOPE[name] = scope
    return name


async def health(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    backends = manager.backend_states()
    return web.json_response(
        {
            "status": "ok" if all(v == "up" for v in backends.values()) else "degraded",
            "version": __version__,
            "backends": backends,
            "readers": len(manager.readers()),
        }
    )


async def readers(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    return web.json_response({"readers": manager.reader_dicts()})


def _sse_frame(event_type: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    lines = []
    if seq is not None:
        lines.append(f"id: {seq}")
    lines.append(f"event: {event_type}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


_last_frame: list[Any] = [None, b""]  # [event, its SSE frame]


def _event_frame(event: Any) -> bytes:
    """The SSE frame of ``event``, encoded once for all streams: every subscriber writes the same
    event right after the others (200 streams: 1 JSON encoding instead of 200; bench_api.py)."""
    if _last_frame[0] is not event:
        _last_frame[1] = _sse_frame(event.type, event.to_dict(), event.seq)
        _last_frame[0] = event
    return _last_frame[1]  # type: ignore[no-any-return]


async def events_sse(request: web.Request) -> web.StreamResponse:
    manager = request.app[MANAGER_KEY]
    bus = request.app[BUS_KEY]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no"}
    )
    # Headers (CORS, security) are added by the middleware only after the handler returns, so a
    # streaming response must get them now: prepare() sends them.
    _copy_security_headers(request, resp)
    with bus.subscribe() as sub, metrics.stream_open("sse"):
        await resp.prepare(request)
        await resp.write(
            _sse_frame("hello", {"version": __version__, "readers": [r.to_dict() for r in manager.readers()]})
        )
        while True:
            try:
                event = await sub.get(timeout=HEARTBEAT_SECONDS)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            await resp.write(_event_frame(event))


async def events_ws(request: web.Request) -> web.StreamResponse:
    manager = request.app[MANAGER_KEY]
    bus = request.app[BUS_KEY]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=4096)
    _copy_security_headers(request, ws)
    await ws.prepare(request)
    await ws.send_json({"type": "hello", "version": __version__,
                        "readers": [r.to_dict() for r in manager.readers()]})
    with bus.subscribe() as sub, metrics.stream_open("ws"):

        async def pump() -> None:
            while True:
                event = await sub.get()
                await ws.send_str(json.dumps(event.to_dict(), ensure_ascii=False))

        pump_task = asyncio.create_task(pump())
        try:
            async for msg in ws:  # the client sends nothing we act on; we only watch for close
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            pump_task.cancel()
    return ws


def _copy_security_headers(request: web.Request, resp: web.StreamResponse) -> None:
    from cardd.api.security import SECURITY_HEADERS

    for k, v in SECURITY_HEADERS.items():
        resp.headers[k] = v
    origin = request.headers.get("Origin")
    if origin is not None:  # the middleware already refused origins that are not allowed
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Vary"] = "Origin"


def create_app(
    config: Config,
    manager: ReaderManager,
    bus: EventBus,
    station: RfidStation | None = None,
    moica: MoicaService | None = None,
) -> web.Application:
    token_file = config.api.token_file or (config.state_dir / "token")
    tokens = TokenStore(token_file)  # created 0600 at first start; re-read when rotated
    app = web.Application(
        # one middleware: security checks, then CardError / crashes as JSON; its tables follow
        # configuration reloads of [api] (cardd.reload.derived). One layer: issue 5 benchmark.
        middlewares=[security_middleware(config.api, tokens)],
        client_max_size=config.api.max_body_bytes,
    )
    # security headers (and CORS for allowed origins) on every answer, streams included
    app.on_response_prepare.append(add_security_headers)
    app[MANAGER_KEY] = manager
    app[BUS_KEY] = bus
    app.router.add_get("/v1/health", health, name=_route("health"))
    app.router.add_get("/v1/readers", readers, name=_route("readers", "readers"))
    app.router.add_get("/v1/events", events_sse, name=_route("events", "readers"))
    app.router.add_get("/v1/ws", events_ws, name=_route("ws", "readers"))
    from cardd.api.openapi import openapi_json

    app.router.add_get("/v1/openapi.json", openapi_json, name=_route("openapi"))
    app[CONFIG_KEY] = config
    app[STATION_KEY] = station or RfidStation(config)
    app[MOICA_KEY] = moica or MoicaService(config)
    add_rfid_routes(app, _route)
    add_moica_routes(app, _route)
    from cardd.api.pinpage import add_routes as add_pin_routes

    add_pin_routes(app, _route)  # /pin, /v1/pin/*, /v1/client/cardd.js (cardd.api.pinpage)
    add_metrics_routes(app, _route)  # /v1/metrics, /v1/diag/events: token callers only
    if config.kiosk.enabled and config.kiosk.page:  # the entrance screen (cardd.kiosk.page)
        from cardd.kiosk.page import add_routes as add_kiosk_page

        add_kiosk_page(app, _route, config.kiosk.display_seconds)
    return app
