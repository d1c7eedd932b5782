# SPDX-License-Identifier: Apache-2.0
"""The kiosk loop: tap → token → decision → gate, display and audit.

Runs inside the daemon (``cardd kiosk``, or ``cardd serve`` with ``[kiosk] enabled = true``):
it listens on the event bus for ``tag.tapped`` (PC/SC, NFC and serial EM4100 readers) and
``barcode.scanned``, and publishes

- ``kiosk.decision``: ``{"decision": "allow"|"deny", "reason", "message", "messageEn",
  "screenMessage", "token": {"kind", "source", "masked", "reader"}, "offline", "ms": {...}}``;
  ``ms`` holds ``record`` (reading a student card's record sector), ``library`` (waiting for the
  library system) and ``total`` (from the tap event to this event), for the benchmark and for
  technicians;
- ``kiosk.alarm``: a lost card was presented (``reason`` ``card_lost``), or the gate relay
  failed (``gate_unavailable``);
- ``kiosk.status``: ``{"libraryOnline": true|false|null, "queued": n}`` when the library
  system goes away or comes back;
- ``kiosk.offline_report``: offline decisions reported after the library system came back.

Taps are decided one at a time, in order (a SIP2 connection has one request in flight anyway;
kiosk.md §1.5); the gate pulse runs beside the loop, so the next tap is not held up by it.

Reporting offline decisions: SIP2 has no message for "this patron entered", so each queued
decision is reported by asking the library system about that patron again once it answers; the
verdict it would have given is stored with the entry (and the patron identifier forgotten), and
a ``kiosk.offline_report`` event lists them (masked), with how many admissions the library
system would have refused. The library system sees the lookups in its own SIP2 log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cardd.config import Config
from cardd.errors import (
    CardError,
    CardNotPersonalized,
    CardRemoved,
    LibrarySystemUnavailable,
    NoCard,
)
from cardd.events import Event, EventBus, Subscription
from cardd.kiosk.decide import REASONS, Decider, Decision, online_verdict
from cardd.kiosk.offline import KioskStore
from cardd.kiosk.patron import PatronSource
from cardd.kiosk.tokens import Token, TokenKind, from_barcode, from_record, from_tap, unreadable
from cardd.readers.manager import ReaderManager
from cardd.rfid.record import RecordState

if TYPE_CHECKING:
    from cardd.kiosk.gate import GateRelay
    from cardd.rfid.burn import CardRecord
    from cardd.rfid.station import RfidStation

logger = logging.getLogger(__name__)

#: card types whose record sector the kiosk reads (MIFARE Classic: student cards are EasyCards)
_RECORD_CARD_TYPES = frozenset({"mifare_classic_1k", "mifare_classic_4k"})
#: a record read longer than this is given up: the patron is waiting at the gate
RECORD_READ_TIMEOUT = 3.0


class KioskService:
    """The kiosk inside the daemon: start() after the reader manager, stop() before it."""

    def __init__(
        self,
        config: Config,
        manager: ReaderManager,
        bus: EventBus,
        station: RfidStation | None = None,
        *,
        patrons: PatronSource | None = None,
        gate: GateRelay | None = None,
    ) -> None:
        self.config = config
        self.kiosk = config.kiosk
        self.manager = manager
        self.bus = bus
        self.station = station
        self.patrons = patrons
        self.gate = gate
        self._io = ThreadPoolExecutor(1, thread_name_prefix="cardd-kiosk-io")
        self.store: KioskStore | None = None
        self.decider: Decider | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._report_now = asyncio.Event()
        self._online: bool | None = None
        self._subscription: Subscription | None = None
        self._stopping = False

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.store = await loop.run_in_executor(self._io, KioskStore, self.config.state_dir)
        await self._run_io(self._purge)
        if self.patrons is None and self.kiosk.sip2 is not None:
            from cardd.kiosk.sip2.client import Sip2Client

            client = Sip2Client(self.kiosk.sip2, on_state=self._library_state)
            self.patrons = client
            # Log in now so the first tap does not pay for it; offline at start is no error
            # (the client's keep-alive and the report loop keep trying).
            self._tasks.append(asyncio.create_task(self._connect(client), name="kiosk.sip2"))
        if self.gate is None and self.kiosk.gate is not None:
            from cardd.kiosk.gate import GateRelay

            self.gate = GateRelay(self.kiosk.gate)
        if self.gate is not None:
            await self.gate.start()  # relay off: it may have been left on by a crash
        station = self.station
        self.decider = Decider(
            self.kiosk.policy,
            self.kiosk.rules,
            self.store,
            patrons=self.patrons,
            ledger=(lambda: station.ledger) if station is not None else None,
            io=self._io,
        )
        # Subscribe now, not in the task: a tap published right after start() is not missed.
        self._subscription = self.bus.subscribe()
        self._tasks += [
            asyncio.create_task(self._run(), name="kiosk.loop"),
            asyncio.create_task(self._report_loop(), name="kiosk.report"),
        ]
        queued = await self._run_io(self.store.unreported_count)
        self.bus.publish("kiosk.status", {"libraryOnline": None, "queued": queued})
        logger.info(
            "kiosk: running (library system %s, gate %s, offline policy %s)",
            self.kiosk.sip2.address if self.kiosk.sip2 else "none: ledger only",
            "configured" if self.gate is not None else "none",
            self.kiosk.policy.offline_mode,
        )

    async def stop(self) -> None:
        self._stopping = True
        # Cancel, and cancel again what is still running: on Python 3.11 asyncio.wait_for()
        # swallows a cancellation that arrives as its inner await completes (fixed in 3.12), and
        # the SIP2 client's reconnects use it; a task that lost its cancel would hang the stop.
        pending = set(self._tasks)
        for _attempt in range(3):
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=2.0)
            if not pending:
                break
        if pending:
            logger.warning("kiosk: %d task(s) did not stop", len(pending))
        for task in self._tasks:
            if task.done() and not task.cancelled():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        if self._subscription is not None:
            self._subscription.close()
        for task in list(self._side_tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.gate is not None:
            await self.gate.close()  # ends a pulse, relay off; never raises
        close = getattr(self.patrons, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        for task in list(self._side_tasks):  # status updates the client's close set off
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.store is not None:
            await self._run_io(self.store.close)
        self._io.shutdown(wait=True)

    async def _run_io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _purge(self) -> None:
        assert self.store is not None
        now = time.time()
        self.store.purge(
            audit_before=now - self.kiosk.audit_days * 86400,
            grants_before=now - self.kiosk.policy.cache_hours * 3600,
        )

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        sub = self._subscription
        assert sub is not None
        async for event in sub:
            if event.type not in ("tag.tapped", "barcode.scanned"):
                continue
            try:
                await self._handle(event)
            except asyncio.CancelledError:
                raise
            except CardError as e:
                logger.warning("kiosk: %s event not decided: [%s] %s", event.type, e.code, e)
            except Exception:  # one bad event must not stop the gate
                logger.exception("kiosk: unexpected error deciding a %s event", event.type)

    async def _handle(self, event: Event) -> None:
        assert self.decider is not None and self.store is not None
        record_ms: float | None = None
        if event.type == "barcode.scanned":
            reader = event.data.get("reader")
            token = from_barcode(
                event.data.get("text"),
                self.kiosk.rules,
                reader if isinstance(reader, str) else None,
            )
        else:
            token = from_tap(event.data, self.kiosk.rules)
            if self._reads_records(token, event.data):
                started = time.perf_counter()
                token = await self._read_record(token)
                record_ms = (time.perf_counter() - started) * 1000
        decision = await self.decider.decide(token)
        if decision is None:
            logger.debug("kiosk: %s read again within the debounce window", token.masked)
            return
        if decision.allow and self.gate is not None:
            task = asyncio.create_task(self._open_gate())
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)
        payload = decision.to_event()
        payload["ms"] = {
            "record": _round(record_ms),
            "library": _round(decision.library_ms),
            "total": _round((time.time() - event.time) * 1000),
        }
        self.bus.publish("kiosk.decision", payload)
        if decision.alarm:
            self.bus.publish(
                "kiosk.alarm",
                {
                    "reason": decision.reason,
                    "message": decision.message,
                    "token": decision.token.to_event(),
                },
            )
            logger.warning("kiosk: ALARM %s presented %s", decision.reason, decision.token.masked)
        logger.info(
            "kiosk: %s %s %s%s",
            payload["decision"],
            decision.reason,
            decision.token.masked,
            " (offline)" if decision.offline else "",
        )
        await self.decider.commit(decision)
        await self._run_io(lambda: self._audit(decision))
        await self._status_changed()

    def _audit(self, decision: Decision) -> None:
        assert self.store is not None
        token = decision.token
        self.store.audit(
            decision="allow" if decision.allow else "deny",
            reason=decision.reason,
            kind=token.kind.value,
            masked=token.masked,
            reader=token.reader,
            offline=decision.offline,
            detail=decision.detail,
        )

    async def _status_changed(self) -> None:
        assert self.decider is not None and self.store is not None
        online = self.decider.library_online
        if online == self._online:
            return
        self._online = online
        queued = await self._run_io(self.store.unreported_count)
        self.bus.publish("kiosk.status", {"libraryOnline": online, "queued": queued})
        if online:
            self._report_now.set()  # the library system is back: report what was queued

    # -- student-card records --------------------------------------------------------------

    def _reads_records(self, token: Token, data: Any) -> bool:
        if token.kind is not TokenKind.UID or self.station is None:
            return False
        if not self.kiosk.read_records or self.config.rfid.key_file is None:
            return False
        if data.get("cardType") not in _RECORD_CARD_TYPES or not token.reader:
            return False
        try:
            return self.manager.reader(token.reader).backend == "pcsc"
        except CardError:
            return False

    async def _read_record(self, token: Token) -> Token:
        """The student card's number if the record sector holds one; else the UID token.

        A card that does not answer to the key is an EasyCard like any other; a card pulled
        before the record was read keeps its UID token (the ledger still knows student cards by
        their UID); only a damaged cardd record is refused.
        """
        assert self.station is not None and token.reader is not None
        station, reader = self.station, token.reader
        try:
            cards = await self._run_io(lambda: station.cards)
            read: CardRecord = await self.manager.run(
                reader,
                lambda c, _e: cards.read(c, reader=reader),
                name="kiosk.read",
                timeout=RECORD_READ_TIMEOUT,
                background=True,
            )
        except CardNotPersonalized:
            return token
        except (CardRemoved, NoCard) as e:
            logger.info("kiosk: card left %s before its record was read (%s)", reader, e.code)
            return token
        except CardError as e:
            logger.info("kiosk: record not read on %s: [%s]; deciding on the UID", reader, e.code)
            return token
        state = read.record.state
        if state is RecordState.VALID and read.record.number is not None:
            return from_record(read.record.number, read.uid, reader)
        if state is RecordState.CORRUPT:
            return unreadable("record_corrupt", read.uid, reader)
        return token  # empty or foreign sector: a plain EasyCard

    # -- the gate --------------------------------------------------------------------------

    async def _open_gate(self) -> None:
        assert self.gate is not None
        try:
            await self.gate.open()
        except CardError as e:
            logger.error("kiosk: the gate did not open: [%s] %s", e.code, e)
            self.bus.publish("kiosk.alarm", {"reason": e.code, "message": "閘門故障，請洽櫃台"})

    # -- the library system ----------------------------------------------------------------

    async def _connect(self, client: Any) -> None:
        try:
            await client.connect()
        except CardError as e:
            logger.warning("kiosk: library system not reachable at start: [%s] %s", e.code, e)

    def _library_state(self, online: bool) -> None:
        """The SIP2 client's own view (a failed keep-alive, a reconnect): update the page."""
        if self.decider is None or self._stopping:
            return
        self.decider.library_online = online
        task = asyncio.get_running_loop().create_task(self._status_changed())
        self._side_tasks.add(task)  # kept referenced until done
        task.add_done_callback(self._side_tasks.discard)

    # -- reporting offline decisions -------------------------------------------------------

    async def _report_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), self.kiosk.report_seconds)
            self._report_now.clear()
            try:
                await self.report_offline()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("kiosk: reporting offline decisions failed")

    async def report_offline(self) -> int:
        """Report queued offline decisions; the number reported (0 while still offline)."""
        assert self.store is not None
        if self.patrons is None:
            return 0
        store, patrons = self.store, self.patrons
        entries = await self._run_io(store.unreported)
        reported: list[dict[str, Any]] = []
        for entry in entries:
            try:
                status = await patrons.patron_status(entry.patron)
            except LibrarySystemUnavailable:
                break
            verdict = online_verdict(status, self.kiosk.policy)
            online_allow = REASONS[verdict][0]
            await self._run_io(
                store.mark_reported, entry.id, "allow" if online_allow else "deny", verdict
            )
            reported.append(
                {
                    "at": entry.at,
                    "masked": entry.masked,
                    "kind": entry.kind,
                    "decision": entry.decision,
                    "reason": entry.reason,
                    "onlineDecision": "allow" if online_allow else "deny",
                    "onlineReason": verdict,
                }
            )
        if not reported:
            return 0
        remaining = await self._run_io(store.unreported_count)
        would_deny = sum(
            1 for r in reported if r["decision"] == "allow" and r["onlineDecision"] == "deny"
        )
        self.bus.publish(
            "kiosk.offline_report",
            {
                "count": len(reported),
                "remaining": remaining,
                "admittedButWouldDeny": would_deny,
                "entries": reported,
            },
        )
        await self._run_io(
            lambda: store.audit(
                decision="report",
                reason="offline_report",
                kind="report",
                masked=f"{len(reported)} decisions",
                reader=None,
                offline=False,
                detail=f"admitted but the library system would refuse: {would_deny}",
            )
        )
        logger.info(
            "kiosk: reported %d offline decisions (%d admitted that the library system "
            "would refuse)",
            len(reported),
            would_deny,
        )
        if self._online is not True:
            assert self.decider is not None
            self.decider.library_online = True
            await self._status_changed()
        return len(reported)


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)
