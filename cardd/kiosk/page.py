# SPDX-License-Identifier: Apache-2.0
"""The kiosk page, served by cardd itself: ``GET /kiosk`` (+ ``/kiosk/kiosk.js``,
``/kiosk/kiosk.css``) and its display stream ``GET /kiosk/events``.

A kiosk's browser opens ``http://127.0.0.1:7420/kiosk`` full-screen. The page shows each
``kiosk.decision`` in large Traditional Chinese type (歡迎光臨 / 此卡已掛失，請洽櫃台 / 已在館內 …),
the library system's screen message (SIP2 ``AF``), and a notice while the library system is
offline.

How the page is let in (a decision, see bridge-security.md): a browser sends no ``Origin`` with
a navigation or with a same-origin ``EventSource`` GET, and a page cannot send the bearer token
without putting it where every page script (and the screen) can see it. So these four routes are
*public* (cardd.api.routedoc ``public=True``): they skip caller identification and nothing else
(Host check, security headers). That is safe because of what the stream is: only the kiosk's
display events, which hold exactly what the screen shows to everyone in the entrance hall:
the decision, its message, the screen message, the token kind and the *masked* card number.
Full UIDs and ``tag.tapped`` stay on ``/v1/events``, which still needs a token or an allowed
origin. Other sites cannot read the stream (no CORS grant; other hosts get 421), and the routes
exist only when the kiosk is enabled (``[kiosk] enabled``, ``cardd kiosk``) and ``[kiosk] page``
is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from cardd.api.routedoc import Reply, describe
from cardd.events import EventBus

#: event types the display stream forwards
DISPLAY_EVENTS = frozenset({"kiosk.decision", "kiosk.status"})
HEARTBEAT_SECONDS = 15.0
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_FILES = {"kiosk.html": "text/html", "kiosk.js": "text/javascript", "kiosk.css": "text/css"}


class PageState:
    """The latest kiosk.status, so a page that (re)connects shows the offline notice at once."""

    def __init__(self, display_seconds: float) -> None:
        self.display_seconds = display_seconds
        self.status: dict[str, Any] = {"libraryOnline": None}
        self.task: asyncio.Task[None] | None = None

    async def follow(self, bus: EventBus) -> None:
        with bus.subscribe(maxsize=64) as sub:
            async for event in sub:
                if event.type == "kiosk.status":
                    self.status = dict(event.data)


PAGE_KEY = web.AppKey("kiosk_page", PageState)


def _static(name: str) -> bytes:
    return resources.files("cardd.api").joinpath("static", name).read_bytes()


def _file_handler(name: str) -> Callable[[web.Request], Any]:
    content = _static(name)  # read once at start: a missing file fails the daemon's start
    content_type = _FILES[name]

    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(body=content, content_type=content_type, charset="utf-8")
        resp.headers["Content-Security-Policy"] = _CSP
        return resp

    return handler


def _frame(event_type: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}event: {event_type}\ndata: {body}\n\n".encode()


async def _display_events(bus: EventBus) -> AsyncGenerator[bytes, None]:
    with bus.subscribe(maxsize=64) as sub:
        while True:
            try:
                event = await sub.get(timeout=HEARTBEAT_SECONDS)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event.type in DISPLAY_EVENTS:
                yield _frame(event.type, dict(event.data), event.seq)


async def kiosk_events(request: web.Request) -> web.StreamResponse:
    from cardd.api.app import BUS_KEY

    state = request.app[PAGE_KEY]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no"}
    )
    stream = _display_events(request.app[BUS_KEY])
    try:
        await resp.prepare(request)
        await resp.write(
            _frame(
                "hello",
                {
                    "displaySeconds": state.display_seconds,
                    "status": state.status,
                },
            )
        )
        async for chunk in stream:
            await resp.write(chunk)
    finally:
        await stream.aclose()
    return resp


async def _start_following(app: web.Application) -> None:
    from cardd.api.app import BUS_KEY

    state = app[PAGE_KEY]
    state.task = asyncio.create_task(state.follow(app[BUS_KEY]))


async def _stop_following(app: web.Application) -> None:
    task = app[PAGE_KEY].task
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def add_routes(app: web.Application, route: Callable[..., str], display_seconds: float) -> None:
    """Register the kiosk page's routes (public: see the module docstring)."""
    app[PAGE_KEY] = PageState(display_seconds)
    app.on_startup.append(_start_following)
    app.on_cleanup.append(_stop_following)
    for name, path, file, summary in (
        ("kiosk.page", "/kiosk", "kiosk.html", "The kiosk page (entrance screen)"),
        ("kiosk.js", "/kiosk/kiosk.js", "kiosk.js", "The kiosk page's script"),
        ("kiosk.css", "/kiosk/kiosk.css", "kiosk.css", "The kiosk page's style sheet"),
    ):
        app.router.add_get(path, _file_handler(file), name=route(name))
        describe(
            name,
            "GET",
            path,
            summary,
            public=True,
            tags=("kiosk",),
            responses={200: Reply(summary, content_type=_FILES[file])},
        )
    app.router.add_get("/kiosk/events", kiosk_events, name=route("kiosk.events"))
    describe(
        "kiosk.events",
        "GET",
        "/kiosk/events",
        "The kiosk page's display stream (SSE)",
        description="Server-Sent Events: hello {displaySeconds, status}, then kiosk.decision and "
        "kiosk.status events, with masked card numbers only.",
        public=True,
        tags=("kiosk",),
        responses={200: Reply("An event stream", content_type="text/event-stream")},
    )
