# SPDX-License-Identifier: Apache-2.0
"""A test SIP2 server (ACS) on loopback, with faults to inject. Test and demo material only.

It answers 93 (login), 99 (status), 23 (patron status), 63 (patron information), 35 (end
patron session) and 97 (resend), like Evergreen and Koha do for a gate, from a patron table::

    server = Sip2TestServer({"1234567890": TestPatron("1234567890", "Lin Mei")})
    port = await server.start()                  # port 0: the kernel picks one
    server.faults.bad_checksum = 1               # the next reply carries a wrong checksum
    ...
    await server.restart()                       # stop, then start on the same port
    await server.stop()

From a thread or another process: :class:`ThreadedSip2Server`, or ``cardd sip2 test-server``.

Faults (:class:`Sip2Faults`; counts are "the next N", :data:`ALWAYS` = every time):

* ``bad_checksum``: replies whose AZ is off by one (a 97 then gets the correct reply, unless
  the fault still applies);
* ``request_resend``: answer requests with 96 instead;
* ``delay`` / ``delay_replies``: wait before replying (a slow library system);
* ``close_after``: close the connection when that many more messages have arrived, without
  answering the last one (a dropped connection);
* ``refuse_login``: 940 to every login (and close, as Koha does);
* ``terminator``: ``b"\\r\\n"`` answers with CRLF, Koha's default;
* ``codepoint_checksum``: checksums summed over characters rather than bytes (an older Koha);
* ``swallow``: read requests and never answer (a hung server);
* ``stale_reply``: send the previous reply again before the answer (a late answer to an
  earlier request, which must never be taken for this one).

Everything it receives is kept in :attr:`Sip2TestServer.received` (parsed), so tests can see
what the client sent (keep-alives, resends, sequence numbers) without mocking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardd.errors import Sip2MessageInvalid
from cardd.kiosk.patron import STATUS_FLAGS
from cardd.kiosk.sip2 import messages as M

logger = logging.getLogger(__name__)

ALWAYS = -1
BLANK_STATUS = " " * 14
#: Evergreen's unknown-patron status: no charge, renew, recall or hold privileges
UNKNOWN_STATUS = "YYYY" + " " * 10


def status_field(*flags: str) -> str:
    """The 14-character patron status with ``flags`` (names from STATUS_FLAGS) set to 'Y'."""
    unknown = set(flags) - set(STATUS_FLAGS)
    if unknown:
        raise ValueError(f"unknown patron status flag(s): {', '.join(sorted(unknown))}")
    return "".join("Y" if name in flags else " " for name in STATUS_FLAGS)


@dataclass(frozen=True)
class TestPatron:
    __test__ = False  # not a pytest class

    patron_id: str
    name: str
    status: str = BLANK_STATUS
    #: AF lines sent with every answer about this patron
    screen_messages: tuple[str, ...] = ()
    valid: bool = True
    #: AD, checked (CQ) when the request carries one
    password: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TestPatron:
        flags = data.get("flags", [])
        return cls(
            patron_id=str(data["id"]),
            name=str(data.get("name", "")),
            status=status_field(*flags) if flags else str(data.get("status", BLANK_STATUS)),
            screen_messages=tuple(data.get("screen_messages", ())),
            valid=bool(data.get("valid", True)),
            password=str(data.get("password", "")),
        )


@dataclass
class Sip2Faults:
    bad_checksum: int = 0
    request_resend: int = 0
    delay: float = 0.0
    delay_replies: int = 0
    close_after: int | None = None
    refuse_login: bool = False
    terminator: bytes = b"\r"
    codepoint_checksum: bool = False
    swallow: int = 0
    stale_reply: int = 0

    @staticmethod
    def take(count: int) -> tuple[bool, int]:
        """(applies now, remaining count) for a 'next N / ALWAYS' counter."""
        if count == ALWAYS:
            return True, ALWAYS
        if count > 0:
            return True, count - 1
        return False, 0


@dataclass(eq=False)
class _Session:
    writer: asyncio.StreamWriter
    task: asyncio.Task[Any] | None = None
    logged_in: bool = False
    user: str = ""
    #: the last reply as it should have been (what a 97 gets)
    last_reply: bytes | None = None


@dataclass
class Received:
    """One message the server received: parsed, with the connection number it came on."""

    connection: int
    message: M.Message
    raw: bytes = field(repr=False)


class Sip2TestServer:
    """See the module docstring. Not thread-safe: use it from its event loop."""

    def __init__(
        self,
        patrons: Mapping[str, TestPatron] | None = None,
        *,
        accounts: Mapping[str, str] | None = None,
        institution: str = "MAIN",
        library_name: str = "cardd test library",
        terminal_password: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        encoding: str = "utf-8",
        ssl_context: ssl.SSLContext | None = None,
        login_required: bool = True,
        retries_allowed: int = 3,
        now: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self.patrons: dict[str, TestPatron] = dict(patrons or {})
        self.accounts: dict[str, str] = dict(
            accounts if accounts is not None else {"kiosk": "secret"}
        )
        self.institution = institution
        self.library_name = library_name
        self.terminal_password = terminal_password
        self.host = host
        self.port = port
        self.encoding = encoding
        self.ssl_context = ssl_context
        self.login_required = login_required
        self.retries_allowed = retries_allowed
        self.faults = Sip2Faults()
        self.received: list[Received] = []
        self.connections = 0
        self._now = now
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._changed = asyncio.Condition()

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen (on the same port after a restart) and return the port."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.ssl_context, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("SIP2 test server on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every connection (as a crashing or restarting server does)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        sessions = list(self._sessions)
        self._sessions.clear()
        for session in sessions:
            session.writer.close()
            if session.task is not None and session.task is not asyncio.current_task():
                session.task.cancel()  # e.g. one sleeping in a `delay` fault
        tasks = [
            s.task for s in sessions if s.task is not None and s.task is not asyncio.current_task()
        ]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Sip2TestServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- observing ------------------------------------------------------------------------------

    def messages(self, msg_id: str | None = None) -> list[M.Message]:
        return [r.message for r in self.received if msg_id is None or r.message.id == msg_id]

    async def wait_for(
        self, predicate: Callable[[Sip2TestServer], bool], timeout: float = 10.0
    ) -> None:
        """Until ``predicate(self)`` holds (checked at every received message)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

    # -- serving --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        session = _Session(writer, asyncio.current_task())
        self._sessions.add(session)
        framer = M.Framer()
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    return
                for raw in framer.feed(data):
                    if not await self._handle(number, session, raw):
                        return
        except (OSError, Sip2MessageInvalid) as e:
            logger.debug("SIP2 test server: connection %d: %s", number, e)
        except asyncio.CancelledError:
            # stop() cancels connections (e.g. one sleeping in a `delay` fault); ending quietly
            # keeps asyncio's stream callback from logging the cancellation as an error
            return
        finally:
            self._sessions.discard(session)
            writer.close()

    async def _handle(self, number: int, session: _Session, raw: bytes) -> bool:
        """Answer one frame; False closes the connection."""
        f = self.faults
        if f.close_after is not None:
            f.close_after -= 1
            if f.close_after <= 0:
                f.close_after = None
                logger.info("SIP2 test server: dropping connection %d (fault)", number)
                return False
        try:
            msg = M.parse_message(raw, encoding=self.encoding)
        except Sip2MessageInvalid as e:
            logger.info("SIP2 test server: bad request (%s): 96", e)
            await self._write(session, M.REQUEST_SC_RESEND + f.terminator, remember=False)
            return True
        self.received.append(Received(number, msg, raw))
        async with self._changed:
            self._changed.notify_all()

        if msg.id == "97":
            if session.last_reply is not None:
                await self._write(session, self._faulty(session.last_reply), remember=False)
            return True
        swallow, f.swallow = f.take(f.swallow)
        if swallow:
            return True
        resend, f.request_resend = f.take(f.request_resend)
        if resend:
            await self._write(session, M.REQUEST_SC_RESEND + f.terminator, remember=False)
            return True
        if msg.id != "99" and msg.id != "93" and self.login_required and not session.logged_in:
            logger.info("SIP2 test server: %s before login; closing", msg.id)
            return False
        reply_body, keep_open = self._answer(session, msg)
        if reply_body is None:
            return keep_open
        reply = self._frame(reply_body, msg)
        delayed, f.delay_replies = f.take(f.delay_replies)
        if delayed and f.delay > 0:
            await asyncio.sleep(f.delay)
        stale, f.stale_reply = f.take(f.stale_reply)
        if stale and session.last_reply is not None:
            await self._write(session, session.last_reply, remember=False)
        await self._write(session, self._faulty(reply), remember=True, correct=reply)
        return keep_open

    def _answer(self, session: _Session, msg: M.Message) -> tuple[str | None, bool]:
        """(reply body, keep the connection open)."""
        now = M.sip_date(self._now())
        if msg.id == "93":
            user, password = msg.get("CN", ""), msg.get("CO", "")
            ok = (
                not self.faults.refuse_login
                and user in self.accounts
                and self.accounts[user] == password
            )
            session.logged_in, session.user = ok, (user or "")
            return M.build("94", ("1" if ok else "0",)), ok
        if msg.id == "99":
            return M.build(
                "98",
                ("Y", "N", "N", "N", "N", "Y", "030", f"{self.retries_allowed:03d}", now, "2.00"),
                [
                    ("AO", self.institution),
                    ("AM", self.library_name),
                    # 23, 11, 09, 01, 99, 97, 93, 63, 35, ...
                    ("BX", "YNNNYYYYYNNNNNNN"),
                ],
            ), True
        if msg.id in ("23", "63"):
            return self._patron_reply(msg, now), True
        if msg.id == "35":
            return M.build(
                "36",
                ("Y", now),
                [("AO", self.institution), ("AA", msg.get("AA", "") or "")],
            ), True
        logger.info("SIP2 test server: no answer to %s", msg.id)
        return None, True

    def _patron_reply(self, msg: M.Message, now: str) -> str:
        patron_id = msg.get("AA", "") or ""
        patron = self.patrons.get(patron_id)
        terminal_ok = self.terminal_password is None or msg.get("AC") == self.terminal_password
        fields = [("AO", msg.get("AO", "") or ""), ("AA", patron_id)]
        if patron is None or not terminal_ok:
            status, name, valid = UNKNOWN_STATUS, "", "N"
            screen = ["Invalid terminal password"] if not terminal_ok else ["Unknown patron"]
        else:
            status, name, valid = patron.status, patron.name, "Y" if patron.valid else "N"
            screen = list(patron.screen_messages)
        fields += [("AE", name), ("BL", valid)]
        ad = msg.get("AD")
        if ad and patron is not None:
            fields.append(("CQ", "Y" if ad == patron.password else "N"))
        fields += [("AF", line) for line in screen]
        if msg.id == "23":
            return M.build("24", (status, "000", now), fields)
        counts = ("0000",) * 6
        return M.build("64", (status, "000", now, *counts), fields)

    # -- writing --------------------------------------------------------------------------------

    def _frame(self, body: str, request: M.Message) -> bytes:
        """Reply in the request's style: AY echoed, AZ when the request had one."""
        f = self.faults
        frame = M.encode_frame(
            body,
            sequence=request.sequence,
            encoding=self.encoding,
            error_detection=request.checksummed,
            terminator=b"",
        )
        if request.checksummed and f.codepoint_checksum:
            text = frame[:-4].decode(self.encoding)
            frame = frame[:-4] + f"{(-sum(map(ord, text))) & 0xFFFF:04X}".encode()
        return frame + f.terminator

    def _faulty(self, frame: bytes) -> bytes:
        """``frame`` with a wrong checksum, if that fault applies now."""
        bad, self.faults.bad_checksum = self.faults.take(self.faults.bad_checksum)
        if not bad:
            return frame
        body = frame.rstrip(b"\r\n")
        tail = frame[len(body) :]
        if len(body) >= 6 and body[-6:-4] == b"AZ":
            wrong = (int(body[-4:], 16) + 1) & 0xFFFF
            return body[:-4] + f"{wrong:04X}".encode() + tail
        return b"#" + frame  # no checksum to spoil: spoil the message id instead

    async def _write(
        self, session: _Session, frame: bytes, *, remember: bool, correct: bytes | None = None
    ) -> None:
        if remember:
            session.last_reply = correct if correct is not None else frame
        session.writer.write(frame)
        await session.writer.drain()


def load_patrons(path: Path) -> dict[str, TestPatron]:
    """A patron table from JSON: ``[{"id": "...", "name": "...", "flags": ["card_reported_lost"],
    "screen_messages": ["..."], "valid": true}, ...]``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    patrons = [TestPatron.from_json(item) for item in data]
    return {p.patron_id: p for p in patrons}


def demo_patrons() -> dict[str, TestPatron]:
    """The patrons `cardd sip2 test-server` serves by default (and the tests use)."""
    patrons = [
        TestPatron("1234567890", "林美玲"),
        TestPatron(
            "2000000002",
            "Chen Wei",
            status_field("card_reported_lost", "charge_privileges_denied"),
            ("Card reported lost",),
        ),
        TestPatron(
            "3000000003",
            "Wang Hao",
            status_field("charge_privileges_denied", "excessive_outstanding_fines"),
            ("Fines of NT$120 outstanding", "Please see the front desk"),
        ),
    ]
    return {p.patron_id: p for p in patrons}


class ThreadedSip2Server:
    """A Sip2TestServer on its own event loop thread (for CLI tests and synchronous code).

    Faults and patrons are changed through :meth:`call`, which runs a function on the loop."""

    def __init__(self, server: Sip2TestServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sip2-test-server", daemon=True
        )

    def start(self) -> int:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)

    def call(self, fn: Callable[[Sip2TestServer], Any]) -> Any:
        async def run() -> Any:
            return fn(self.server)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ThreadedSip2Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
