# SPDX-License-Identifier: Apache-2.0
"""Resource limits of the localhost API (bridge-security.md §2.8): slow clients, big bodies,
too many open requests per origin.

* **Slow headers (slowloris).** aiohttp has no deadline for a request's headers: a client may
  send one header line a minute and hold the connection for ever. :class:`GuardedRequestHandler`
  starts a timer when the first byte of a request arrives (or the connection opens) and, if the
  headers are not complete within ``read_timeout``, answers 408 ``request_timeout`` and closes
  the connection. Idle keep-alive connections are closed after :data:`KEEPALIVE_SECONDS`.
* **Slow or big bodies.** The security middleware reads every request body itself, at most
  ``max_body_bytes`` (413 ``body_too_large``) within ``read_timeout`` (408 ``request_timeout``),
  see :func:`read_body`. Both answers close the connection.
* **Open requests per origin.** :class:`OpenRequests` counts the requests of each browser origin
  being handled at once, event streams (SSE, WebSocket) included for as long as they are open.
  Over ``max_connections_per_origin`` the next one gets 429 ``too_many_connections``. A browser
  opens at most 6 connections per host, so only a page that leaks streams reaches 8. Local
  programs holding the token are not counted: they are trusted like the operator who runs them.
* **Errors aiohttp answers itself** (a request line it cannot parse): JSON and the security
  headers, like every other answer (:meth:`GuardedRequestHandler.handle_error`).

``cardd serve`` runs the app with :class:`GuardedAppRunner` instead of ``web.AppRunner``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)

#: idle keep-alive connections are closed after this (aiohttp's default is an hour)
KEEPALIVE_SECONDS = 30.0


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


async def read_body(request: web.Request, max_bytes: int, timeout: float) -> bytes:
    """The whole request body, refusing bodies over ``max_bytes`` and senders slower than
    ``timeout`` seconds for the whole body."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise BodyTooLarge  # refuse before reading a byte of it
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()  # aiohttp stops at client_max_size (= max_bytes)
    except TimeoutError:
        raise BodyTimeout from None
    except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length
        raise BodyTooLarge from None
    if len(raw) > max_bytes:
        raise BodyTooLarge
    return raw


class OpenRequests:
    """Requests being handled per origin; a plain dict, touched only on the event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def acquire(self, origin: str) -> bool:
        n = self.open.get(origin, 0)
        if n >= self.limit:
            return False
        self.open[origin] = n + 1
        return True

    def releaser(self, origin: str) -> Callable[[], None]:
        """A function that releases one acquired request of ``origin``, once however often it
        is called (when the handler ends and when the connection closes)."""
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.release(origin)

        return release

    def release(self, origin: str) -> None:
        n = self.open[origin] - 1
        if n:
            self.open[origin] = n
        else:
            del self.open[origin]


def raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error answer for places where aiohttp's response machinery is not
    available (the header timer), with the same headers every other answer has."""
    from cardd.api.security import SECURITY_HEADERS

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in SECURITY_HEADERS.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol plus a deadline for request headers.

    The timer runs from the first byte of a request (or from the connection's opening) until
    aiohttp has parsed its headers. Bytes that belong to a body being received do not start it:
    the middleware bounds bodies (:func:`read_body`).
    """

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._armed_at_count = 0
        self._last_payload: Any = None
        self._on_lost: set[Callable[[], None]] = set()

    def call_on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the connection closes. aiohttp does not cancel a handler whose
        client went away (an event stream notices only at its next write), so the open-request
        count of an origin is released here, at once."""
        self._on_lost.add(callback)

    def forget(self, callback: Callable[[], None]) -> None:
        self._on_lost.discard(callback)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._last_payload = None
        callbacks, self._on_lost = self._on_lost, set()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a failing callback must not keep aiohttp from cleaning up
                logger.exception("connection-lost callback failed")
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm()  # a request's headers are complete
            if self._messages:
                self._last_payload = self._messages[-1][1]
        elif (
            self._header_timer is None
            and data
            and not self._upgraded
            and self._payload_parser is None
            and (self._last_payload is None or self._last_payload.is_eof())
        ):
            self._arm()  # the first bytes of the next request on a kept-alive connection

    def _arm(self) -> None:
        self._disarm()
        self._armed_at_count = self._request_count
        self._header_timer = self._loop.call_later(self._header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or self._upgraded or self._request_count != self._armed_at_count:
            return
        if self._request_in_progress or self._messages:
            return  # the request arrived; its handler owns the connection now
        peer = self.peername
        logger.warning(
            "closed a connection from %s: request headers not complete in %.1f s",
            peer,
            self._header_timeout,
        )
        try:
            transport.write(
                raw_error(
                    408, "Request Timeout", "request_timeout", "The request was sent too slowly."
                )
            )
        finally:
            self.force_close()
            transport.close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own error answers (unparsable request, error outside the middleware) as
        JSON with the security headers; the detail goes to the log only."""
        from cardd.api.security import SECURITY_HEADERS

        if status >= 500:
            logger.error("error outside the API handlers", exc_info=exc)
            code, text = "internal_error", "cardd hit an internal error; see its log."
        else:
            logger.info("refused a malformed request: %s", message or exc)
            code, text = "bad_request", "The request is not valid HTTP."
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was already being sent")
        resp = web.json_response(
            {"error": {"code": code, "message": text}}, status=status, headers=SECURITY_HEADERS
        )
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self, loop=self._loop, header_timeout=self._header_timeout, **self._kwargs
        )


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections get :class:`GuardedRequestHandler`.

    ``read_timeout`` bounds request headers; keep-alive idles end after :data:`KEEPALIVE_SECONDS`.
    """

    def __init__(self, app: web.Application, *, read_timeout: float, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_SECONDS)
        super().__init__(app, **kwargs)
        self._read_timeout = read_timeout

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        # Same arguments as the app's own Server (the runner's kwargs plus the app's debug
        # flag and handler_args), only the connection class differs.
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            header_timeout=self._read_timeout,
            **plain._kwargs,  # noqa: SLF001 - aiohttp offers no other way to copy them
        )
