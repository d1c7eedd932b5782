# SPDX-License-Identifier: Apache-2.0
"""The SIP2 client: an asyncio connection to the library system that answers patron lookups.

::

    async with Sip2Client(config) as sip2:              # connect, 93 → 941, 99 → 98
        status = await sip2.patron_status("1234567890")  # 63 (or 23) → PatronStatus

A daemon that must start while the library system is down calls ``await client.connect()``
and catches :class:`~cardd.errors.LibrarySystemUnavailable`: the keep-alive task keeps trying
and :attr:`Sip2Client.online` tells the state.

Behaviour (kiosk.md §1.4, §1.5):

* One request in flight per connection: callers queue on a lock, in arrival order.
* Every request has the configured timeout (default 3 s) for each reply it waits for.
* A reply with a wrong checksum (or that does not parse) is asked again with 97, at most
  ``resends`` times; a 96 from the server makes us resend the request, as often.
* A timeout, a reset, a closed connection, a reply that stays corrupt, a reply of the wrong kind
  or for another patron: drop the connection, reconnect (93, 99) and retry once; if that fails
  too, :class:`~cardd.errors.LibrarySystemUnavailable` (the kiosk's offline policy decides).
* A 940 raises :class:`~cardd.errors.Sip2LoginRefused` at once: retrying a wrong password helps
  nobody and may lock the account.
* While idle, a 99 every ``keepalive_interval`` seconds keeps the session (Koha drops idle
  clients) and re-opens it when it was lost, so the first tap after an outage is fast.
* The 98 reply's retries figure lowers ``resends`` when smaller; its timeout period never
  lengthens ours (a patron at a gate cannot wait for the server's idea of patience).
* A caller cancelled mid-request (the kiosk gave up) drops the connection: its reply could
  otherwise be taken for the next patron's.
* Logs never hold passwords or names, and patron ids only masked (``12****7890``); whole
  frames are logged at the TRAFFIC level, redacted the same way.
* The client sends no 35 on its own: a gate only looks patrons up and opens no patron session.
  :meth:`Sip2Client.end_patron_session` is there for the technician's CLI and later devices.
  SIP2 has no logout, so :meth:`Sip2Client.close` closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cardd.errors import (
    InvalidInput,
    LibrarySystemUnavailable,
    Sip2ChecksumMismatch,
    Sip2LoginRefused,
    Sip2MessageInvalid,
)
from cardd.kiosk.patron import PatronStatus
from cardd.kiosk.sip2 import messages as M
from cardd.kiosk.sip2.config import Sip2Config
from cardd.log import TRAFFIC

logger = logging.getLogger(__name__)

_READ_CHUNK = 4096
#: seconds after a 940 during which the client does not log in again (nor let the keep-alive
#: do it): a wrong password retried every tap or minute can lock the library's SIP2 account
LOGIN_BACKOFF = 300.0


class _Broken(Exception):
    """This connection cannot be trusted any more: drop it, reconnect, retry once."""


@dataclass
class Sip2Stats:
    """Counters since the client was made (for `cardd sip2 status`, tests and the benchmark)."""

    requests: int = 0
    connects: int = 0
    #: connections lost or dropped by us after a failure
    drops: int = 0
    resent_after_96: int = 0
    asked_97: int = 0
    keepalives: int = 0
    tolerated_checksums: int = 0


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = M.Framer()
        self.frames: deque[bytes] = deque()
        self.sequence = 0
        #: this server's sums over non-ASCII replies disagree with ours even after a 97: stop
        #: asking again on this connection (kiosk.md §1.4: log, do not fail hard)
        self.tolerate_non_ascii = False

    def next_sequence(self) -> int:
        seq = self.sequence
        self.sequence = (seq + 1) % 10
        return seq

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def ssl_context(config: Sip2Config) -> ssl.SSLContext | None:
    """The TLS context for ``config`` (None without TLS). Hostname checks stay on unless
    ``tls_verify = false``."""
    if not config.tls:
        return None
    try:
        ctx = ssl.create_default_context(
            cafile=str(config.tls_ca_file) if config.tls_ca_file else None
        )
        if config.tls_cert_file:
            ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as e:
        raise LibrarySystemUnavailable(f"SIP2 TLS set-up failed: {e}") from None
    if not config.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Sip2Client:
    """A :class:`~cardd.kiosk.patron.PatronSource` over SIP2."""

    def __init__(
        self,
        config: Sip2Config,
        *,
        now: Callable[[], dt.datetime] = dt.datetime.now,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.config = config
        self.stats = Sip2Stats()
        #: the last 98 reply (None before the first session)
        self.acs_status: M.AcsStatus | None = None
        self._now = now
        self._on_state = on_state
        self._online = False
        self._lock = asyncio.Lock()
        self._conn: _Connection | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._last_activity = 0.0
        self._closed = False
        self._notes_logged: set[str] = set()
        self._refused: tuple[float, str] | None = None

    # -- public -----------------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """The last exchange (or keep-alive) with the server succeeded."""
        return self._online

    async def __aenter__(self) -> Sip2Client:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> M.AcsStatus:
        """Open the session now (93, 99) and start the keep-alive. Raises
        LibrarySystemUnavailable (the keep-alive keeps trying) or Sip2LoginRefused."""
        if self._closed:
            raise LibrarySystemUnavailable("the SIP2 client was closed")
        self._start_keepalive()
        async with self._lock:
            try:
                if self._conn is None:
                    await self._open_session()
            except _Broken as e:
                self._drop()
                raise self._unavailable(str(e)) from None
            self._set_online(True)
        assert self.acs_status is not None
        return self.acs_status

    async def patron_status(self, patron_id: str) -> PatronStatus:
        """What the library system says about ``patron_id`` (63 or 23, per configuration)."""
        self._check_patron_id(patron_id)
        cfg = self.config

        def body() -> str:
            if cfg.patron_request == "23":
                return M.patron_status(
                    self._now(), cfg.institution, patron_id, terminal_password=cfg.terminal_password
                )
            return M.patron_information(
                self._now(), cfg.institution, patron_id, terminal_password=cfg.terminal_password
            )

        def check(m: M.Message) -> None:
            got = m.get("AA")
            if got is not None and got != patron_id:
                # a reply about someone else is the worst possible answer at a gate
                raise _Broken(
                    f"reply is about patron {M.mask_patron_id(got)}, "
                    f"not {M.mask_patron_id(patron_id)}"
                )

        msg = await self._call(body, ("64", "24"), check=check)
        reply = M.PatronReply.from_message(msg)
        status = PatronStatus.from_status_field(
            patron_id,
            reply.status,
            valid=reply.valid,
            personal_name=reply.personal_name,
            screen_message="\n".join(reply.screen_messages),
        )
        if logger.isEnabledFor(logging.DEBUG):  # the arguments cost more than the lookup's parse
            logger.debug(
                "patron %s: valid=%s flags=%s%s",
                M.mask_patron_id(patron_id),
                status.valid,
                ",".join(sorted(status.flags)) or "-",
                " (unknown-patron shape)" if status.unknown_shape else "",
            )
        return status

    async def sc_status(self) -> M.AcsStatus:
        """Send a 99 now and return the server's 98."""
        msg = await self._call(lambda: M.sc_status(), ("98",))
        self.acs_status = M.AcsStatus.from_message(msg)
        return self.acs_status

    async def end_patron_session(self, patron_id: str) -> bool:
        """35 → 36: whether the server says the patron session ended."""
        self._check_patron_id(patron_id)
        cfg = self.config
        msg = await self._call(
            lambda: M.end_patron_session(
                self._now(), cfg.institution, patron_id, terminal_password=cfg.terminal_password
            ),
            ("36",),
        )
        return M.EndSessionReply.from_message(msg).ended

    async def close(self) -> None:
        """Stop the keep-alive and close the connection. Idempotent."""
        self._closed = True
        task, self._keepalive_task = self._keepalive_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.writer.wait_closed(), 1.0)
        self._set_online(False)

    # -- the request path ---------------------------------------------------------------------

    async def _call(
        self,
        body: Callable[[], str],
        expect: tuple[str, ...],
        *,
        check: Callable[[M.Message], None] | None = None,
    ) -> M.Message:
        """One request, under the lock: open the session if needed, send, read the reply; on a
        broken connection reconnect and retry once."""
        if self._closed:
            raise LibrarySystemUnavailable("the SIP2 client was closed")
        async with self._lock:
            self.stats.requests += 1
            problem = ""
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        await self._open_session()
                    assert self._conn is not None
                    msg = await self._exchange(self._conn, body(), expect)
                    if check is not None:
                        check(msg)
                    self._set_online(True)
                    return msg
                except _Broken as e:
                    problem = str(e)
                    self._drop()
                    if attempt == 1:
                        logger.warning(
                            "SIP2 %s: %s; reconnecting and retrying once",
                            self.config.address,
                            problem,
                        )
                except BaseException:
                    # cancelled (or a bug) mid-exchange: the reply may still come, on this
                    # connection, and be taken for the next request's
                    self._drop()
                    raise
            raise self._unavailable(problem)

    async def _open_session(self) -> None:
        """Connect, 93 → 941 (when a user is configured), 99 → 98. Raises _Broken or
        Sip2LoginRefused."""
        cfg = self.config
        if self._refused is not None:
            until, message = self._refused
            if asyncio.get_running_loop().time() < until:
                raise Sip2LoginRefused(f"{message}; not tried again for {LOGIN_BACKOFF:g} s")
            self._refused = None
        ctx = ssl_context(cfg)
        if ctx is not None and not cfg.tls_verify:
            logger.warning(
                "SIP2 %s: TLS certificate NOT verified (tls_verify = false)", cfg.address
            )
        try:
            async with asyncio.timeout(cfg.timeout):
                reader, writer = await asyncio.open_connection(
                    cfg.host,
                    cfg.port,
                    ssl=ctx,
                    server_hostname=(cfg.tls_server_name or cfg.host) if ctx else None,
                    limit=M.MAX_FRAME,
                )
        except TimeoutError:
            raise _Broken(f"no connection within {cfg.timeout:g} s") from None
        except ssl.SSLCertVerificationError as e:
            raise _Broken(f"TLS certificate not trusted: {e.verify_message}") from None
        except (OSError, ssl.SSLError) as e:
            raise _Broken(f"cannot connect: {e.strerror or e}") from None
        conn = _Connection(reader, writer)
        self._conn = conn
        self.stats.connects += 1
        if cfg.user or cfg.password:
            reply = await self._exchange(
                conn, M.login(cfg.user, cfg.password, cfg.location), ("94",)
            )
            if not M.login_ok(reply):
                self._drop()
                self._set_online(False)
                # the user name helps the technician; the password never appears
                message = f"SIP2 server {cfg.address} refused the login of user {cfg.user!r} (940)"
                self._refused = (asyncio.get_running_loop().time() + LOGIN_BACKOFF, message)
                raise Sip2LoginRefused(message)
        reply = await self._exchange(conn, M.sc_status(), ("98",))
        acs = M.AcsStatus.from_message(reply)
        if self.acs_status is None or acs.online != self.acs_status.online:
            if not acs.online:
                logger.warning("SIP2 %s: the server reports itself offline (98)", cfg.address)
            if acs.timeout is not None and acs.timeout > cfg.timeout:
                logger.info(
                    "SIP2 %s: server timeout period %.1f s; keeping ours (%g s)",
                    cfg.address,
                    acs.timeout,
                    cfg.timeout,
                )
        self.acs_status = acs
        logger.info("SIP2 session open with %s (%s)", cfg.address, acs.institution or "no AO")

    async def _exchange(self, conn: _Connection, body: str, expect: tuple[str, ...]) -> M.Message:
        cfg = self.config
        resends = cfg.resends
        if self.acs_status is not None and self.acs_status.retries is not None:
            resends = min(resends, self.acs_status.retries)
        if conn.frames:
            logger.debug("SIP2: dropping %d unsolicited frame(s)", len(conn.frames))
            conn.frames.clear()
        seq = conn.next_sequence() if cfg.error_detection else None
        try:
            frame = M.encode_frame(
                body,
                sequence=seq,
                encoding=cfg.encoding,
                error_detection=cfg.error_detection,
                terminator=cfg.terminator_bytes,
            )
        except InvalidInput as e:
            raise InvalidInput(f"{e.message} (check [kiosk.sip2] encoding)") from None
        await self._send(conn, frame)
        asked_97 = resent = 0
        while True:
            raw = await self._read_frame(conn)
            try:
                msg = M.parse_message(
                    raw, encoding=cfg.encoding, tolerate_non_ascii=conn.tolerate_non_ascii
                )
            except Sip2MessageInvalid as e:
                if isinstance(e, Sip2ChecksumMismatch) and e.non_ascii and asked_97 >= resends:
                    conn.tolerate_non_ascii = True
                    msg = M.parse_message(raw, encoding=cfg.encoding, tolerate_non_ascii=True)
                elif asked_97 >= resends:
                    raise _Broken(
                        f"reply still corrupt after {asked_97} resend request(s): {e}"
                    ) from None
                else:
                    asked_97 += 1
                    self.stats.asked_97 += 1
                    logger.info(
                        "SIP2 %s: corrupt reply (%s); asking for it again (97)", cfg.address, e
                    )
                    await self._send(conn, M.REQUEST_ACS_RESEND + cfg.terminator_bytes)
                    continue
            if msg.id == "96":
                if resent >= resends:
                    raise _Broken(f"server asked for a resend {resent + 1} times (96)")
                resent += 1
                self.stats.resent_after_96 += 1
                logger.info("SIP2 %s: server asked for a resend (96)", cfg.address)
                await self._send(conn, frame)
                continue
            if msg.id not in expect:
                raise _Broken(f"expected a {'/'.join(expect)} reply, got {msg.id}")
            self._note(msg)
            if seq is not None and msg.sequence is not None and msg.sequence != seq:
                logger.debug("SIP2: reply sequence %s for request %s", msg.sequence, seq)
            self._last_activity = asyncio.get_running_loop().time()
            return msg

    async def _send(self, conn: _Connection, frame: bytes) -> None:
        if logger.isEnabledFor(TRAFFIC):
            logger.log(TRAFFIC, "SIP2 > %s", M.redact_frame(frame, self.config.encoding))
        try:
            conn.writer.write(frame)
            # the kernel usually takes a whole frame at once; wait (bounded) only when it did not
            if conn.writer.transport.get_write_buffer_size():
                async with asyncio.timeout(self.config.timeout):
                    await conn.writer.drain()
        except TimeoutError:
            raise _Broken(f"could not send within {self.config.timeout:g} s") from None
        except (OSError, RuntimeError) as e:
            raise _Broken(f"connection lost while sending: {e}") from None

    async def _read_frame(self, conn: _Connection) -> bytes:
        # a frame may already be buffered: two replies in one read, or a repeat after a 97
        if not conn.frames:
            timeout = self.config.timeout
            try:
                async with asyncio.timeout(timeout):
                    while not conn.frames:
                        data = await conn.reader.read(_READ_CHUNK)
                        if not data:
                            raise _Broken("the server closed the connection")
                        conn.frames.extend(conn.framer.feed(data))
            except TimeoutError:
                raise _Broken(f"no reply within {timeout:g} s") from None
            except Sip2MessageInvalid as e:
                raise _Broken(str(e)) from None
            except OSError as e:
                raise _Broken(f"connection lost: {e.strerror or e}") from None
        frame = conn.frames.popleft()
        if logger.isEnabledFor(TRAFFIC):
            logger.log(TRAFFIC, "SIP2 < %s", M.redact_frame(frame, self.config.encoding))
        return frame

    # -- keep-alive ---------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        if self.config.keepalive_interval > 0 and self._keepalive_task is None and not self._closed:
            self._last_activity = asyncio.get_running_loop().time()
            self._keepalive_task = asyncio.create_task(self._keepalive(), name="sip2-keepalive")

    async def _keepalive(self) -> None:
        interval = self.config.keepalive_interval
        loop = asyncio.get_running_loop()
        while True:
            wait = self._last_activity + interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await self._keepalive_once()
            except LibrarySystemUnavailable as e:
                # logged once per state change by _set_online; try again after an interval
                logger.debug("SIP2 keep-alive failed: %s", e)
            except Exception:  # noqa: BLE001 - the keep-alive must outlive any one failure
                logger.exception("SIP2 keep-alive failed unexpectedly")
            self._last_activity = loop.time()

    async def _keepalive_once(self) -> None:
        if self._conn is None:
            await self.connect()  # re-opens the session (93, 99): that is the keep-alive
        else:
            await self.sc_status()
        self.stats.keepalives += 1

    # -- helpers ------------------------------------------------------------------------------

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self.stats.drops += 1
            conn.close()

    def _unavailable(self, problem: str) -> LibrarySystemUnavailable:
        self._set_online(False)
        return LibrarySystemUnavailable(f"SIP2 server {self.config.address}: {problem}")

    def _set_online(self, online: bool) -> None:
        if online == self._online:
            return
        self._online = online
        if not self._closed:
            log = logger.info if online else logger.warning
            log("SIP2 server %s is %s", self.config.address, "online" if online else "OFFLINE")
        if self._on_state is not None:
            try:
                self._on_state(online)
            except Exception:  # noqa: BLE001 - a listener must not break the client
                logger.exception("SIP2 state listener failed")

    def _note(self, msg: M.Message) -> None:
        for note in (msg.checksum_note, msg.decode_note):
            if note is None:
                continue
            if msg.checksum_note is note:
                self.stats.tolerated_checksums += 1
            kind = note.split("(")[0]
            if kind not in self._notes_logged:  # once per kind: every tap would repeat it
                self._notes_logged.add(kind)
                logger.warning("SIP2 %s: %s", self.config.address, note)

    @staticmethod
    def _check_patron_id(patron_id: str) -> None:
        if not patron_id or not patron_id.strip():
            raise InvalidInput("empty patron id")
        if any(c in patron_id for c in "\r\n\0") or len(patron_id) > M.MAX_FIELD:
            raise InvalidInput("patron id holds control characters or is too long for SIP2")
