# SPDX-License-Identifier: Apache-2.0
"""PC/SC adapter over pyscard: the only module in cardd that imports pyscard.

=====================  =========  ==============================================================
Function               Supported  Remarks
=====================  =========  ==============================================================
list readers           yes        SCardListReaders; no readers is an empty list, not an error
card/reader events     yes        one watcher thread blocked in SCardGetStatusChange, including
                                  ``\\\\?PnP?\\Notification``; no polling loop in cardd
pcscd restart          yes        context re-established with backoff; readers re-announced
APDU exchange          yes        T=0/T=1 shared connection, left powered on disconnect
escape (SCardControl)  no         not needed yet
PIN pad (FEATURE_*)    no         PIN entry goes through the PKCS#11 module
=====================  =========  ==============================================================

We use only the thin ``smartcard.scard`` layer: pyscard's CardMonitor/ReaderMonitor are
process-wide singletons that die silently when pcscd restarts (style.md §1.4, §7).
Everything leaving this module is ``bytes``, ``int`` status words and cardd's own types/errors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from smartcard import scard

from cardd.errors import (
    CardError,
    CardMute,
    CardRemoved,
    NoCard,
    NoReader,
    OperationCancelled,
    OperationTimeout,
    PcscUnavailable,
    ReaderBusy,
    ReaderUnavailable,
)
from cardd.log import TRAFFIC, redact_apdu, redact_response
from cardd.readers.types import ReaderEvent, ReaderEventKind, ReaderStatus

logger = logging.getLogger(__name__)

BACKEND = "pcsc"
#: SCardStatus dwState bit (pcsclite.h); pyscard does not export it
_SCARD_PRESENT = 0x0004
PNP_READER = "\\\\?PnP?\\Notification"

# pcscd gone, or the context it handed out is no longer valid: re-establish.
_SERVICE_GONE = {
    scard.SCARD_E_NO_SERVICE,
    scard.SCARD_E_SERVICE_STOPPED,
    scard.SCARD_E_INVALID_HANDLE,
    scard.SCARD_F_COMM_ERROR,
}

_ERRORS: dict[int, type[CardError]] = {
    scard.SCARD_E_NO_SERVICE: PcscUnavailable,
    scard.SCARD_E_SERVICE_STOPPED: PcscUnavailable,
    scard.SCARD_F_COMM_ERROR: PcscUnavailable,
    scard.SCARD_E_NO_READERS_AVAILABLE: NoReader,
    scard.SCARD_E_UNKNOWN_READER: NoReader,
    scard.SCARD_E_READER_UNAVAILABLE: ReaderUnavailable,
    scard.SCARD_E_NO_SMARTCARD: NoCard,
    scard.SCARD_W_REMOVED_CARD: CardRemoved,
    scard.SCARD_W_RESET_CARD: CardRemoved,
    scard.SCARD_W_UNPOWERED_CARD: CardRemoved,
    scard.SCARD_W_UNRESPONSIVE_CARD: CardMute,
    scard.SCARD_E_SHARING_VIOLATION: ReaderBusy,
    scard.SCARD_E_TIMEOUT: OperationTimeout,
    scard.SCARD_E_CANCELLED: OperationCancelled,
}


def _error(hr: int, what: str) -> CardError:
    cls = _ERRORS.get(hr, CardError)
    text = scard.SCardGetErrorMessage(hr) if hr else "unknown"
    # The PC/SC text is for the log and the CLI; the HTTP layer only ever shows the code.
    return cls(f"{what}: {text} (0x{hr & 0xFFFFFFFF:08X})")


def _check(hr: int, what: str) -> None:
    if hr != scard.SCARD_S_SUCCESS:
        raise _error(hr, what)


class PcscContext:
    """One SCARDCONTEXT. Not shared between threads that block in it concurrently."""

    def __init__(self) -> None:
        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        _check(hr, "cannot reach pcscd")
        self._ctx: Any = ctx

    @property
    def handle(self) -> Any:
        return self._ctx

    def list_readers(self) -> list[str]:
        hr, readers = scard.SCardListReaders(self._ctx, [])
        if hr == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        _check(hr, "cannot list readers")
        return list(readers)

    def is_valid(self) -> bool:
        return scard.SCardIsValidContext(self._ctx) == scard.SCARD_S_SUCCESS

    def statuses(self, readers: list[str]) -> list[ReaderStatus]:
        """Present state of each reader, without waiting."""
        if not readers:
            return []
        hr, states = scard.SCardGetStatusChange(
            self._ctx, 0, [(r, scard.SCARD_STATE_UNAWARE) for r in readers]
        )
        if hr == scard.SCARD_E_TIMEOUT:
            hr = scard.SCARD_S_SUCCESS
        _check(hr, "cannot read reader states")
        return [_status_from_state(name, ev, atr) for name, ev, atr in states]

    def connect(self, reader: str, *, exclusive: bool = False) -> PcscConnection:
        share = scard.SCARD_SHARE_EXCLUSIVE if exclusive else scard.SCARD_SHARE_SHARED
        hr, hcard, protocol = scard.SCardConnect(
            self._ctx, reader, share, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        )
        _check(hr, f"cannot connect to the card in {reader!r}")
        return PcscConnection(self, reader, hcard, protocol)

    def wait_removed(self, reader: str, timeout: float) -> bool:
        """True once pcscd reports no card in ``reader`` (waits at most ``timeout`` seconds)."""
        states = [(reader, scard.SCARD_STATE_UNAWARE)]
        deadline = time.monotonic() + timeout
        while True:
            ms = max(0, int((deadline - time.monotonic()) * 1000))
            hr, states = scard.SCardGetStatusChange(self._ctx, ms, states)
            if hr != scard.SCARD_S_SUCCESS:
                return hr in (scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE)
            name, event, _atr = states[0]
            if not event & scard.SCARD_STATE_PRESENT:
                return True
            if ms == 0:
                return False
            states = [(name, event & ~scard.SCARD_STATE_CHANGED)]

    def cancel(self) -> None:
        scard.SCardCancel(self._ctx)

    def release(self) -> None:
        if self._ctx is not None:
            scard.SCardReleaseContext(self._ctx)
            self._ctx = None


def _status_from_state(name: str, event: int, atr: Any) -> ReaderStatus:
    present = bool(event & scard.SCARD_STATE_PRESENT)
    return ReaderStatus(
        name=name,
        backend=BACKEND,
        card_present=present,
        atr=bytes(atr) if present and atr else None,
        in_use=bool(event & scard.SCARD_STATE_EXCLUSIVE),
    )


class PcscConnection:
    """A :class:`~cardd.readers.transport.SmartCardConnection` to one card through pcscd."""

    #: how long to wait for pcscd to confirm a removal after an empty response (seconds)
    REMOVAL_GRACE = 1.0

    def __init__(self, context: PcscContext, reader: str, hcard: Any, protocol: int) -> None:
        self._context = context
        self.reader = reader
        self._hcard = hcard
        self._pci = scard.SCARD_PCI_T1 if protocol == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0
        self.protocol = "T=1" if protocol == scard.SCARD_PROTOCOL_T1 else "T=0"
        self.transport = BACKEND

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        if logger.isEnabledFor(TRAFFIC):
            logger.log(TRAFFIC, "%s > %s", self.reader, redact_apdu(apdu))
        hr, response = scard.SCardTransmit(self._hcard, self._pci, list(apdu))
        if hr != scard.SCARD_S_SUCCESS:
            raise _error(hr, "APDU exchange failed")
        if len(response) < 2:
            # Measured with vpcd (simulation.md §3.6): a card that vanishes mid-APDU gives an
            # empty response and no error. Never treat that as success.
            # pcscd notices the removal at its next presence poll (400 ms for vpcd and other
            # drivers without events), so ask it to tell us, for a little longer than that.
            if self._context.wait_removed(self.reader, self.REMOVAL_GRACE):
                raise CardRemoved("the card was removed during the operation")
            raise CardMute("the card gave no status word")
        sw = (response[-2] << 8) | response[-1]
        data = bytes(response[:-2])
        if logger.isEnabledFor(TRAFFIC):
            logger.log(TRAFFIC, "%s < %s %04X", self.reader, redact_response(apdu, data), sw)
        return data, sw

    def atr(self) -> bytes:
        hr, _reader, _state, _protocol, atr = scard.SCardStatus(self._hcard)
        _check(hr, "cannot read card status")
        return bytes(atr)

    def card_present(self) -> bool:
        hr, _reader, state, _protocol, _atr = scard.SCardStatus(self._hcard)
        return hr == scard.SCARD_S_SUCCESS and bool(state & _SCARD_PRESENT)

    def close(self) -> None:
        if self._hcard is None:
            return
        # LEAVE_CARD, not pyscard's default unpower: the next operation (or another program)
        # finds the card as we left it, and a reset would drop MIFARE authentication anyway.
        scard.SCardDisconnect(self._hcard, scard.SCARD_LEAVE_CARD)
        self._hcard = None

    def __enter__(self) -> PcscConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EventSink = Callable[[ReaderEvent], None]


class PcscWatcher:
    """Our own watcher thread (pcsc_scan's model).

    It owns one long-lived context and blocks in SCardGetStatusChange over all readers plus the
    PnP pseudo-reader, feeding the returned states back in. It only reports; it never sends
    APDUs (pyscard #220). When pcscd goes away it reports ``backend.lost`` and every reader as
    removed, then re-establishes the context with backoff and announces the readers again.
    """

    #: backoff bounds while pcscd is down (seconds)
    BACKOFF_MIN = 0.05
    BACKOFF_MAX = 2.0

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._stop = threading.Event()
        self._ctx: PcscContext | None = None
        self._ctx_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cardd-pcsc-watcher", daemon=True)
        #: reader name -> (present, atr, counter) as last reported
        self._known: dict[str, tuple[bool, bytes | None, int | None]] = {}
        self.available = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        # SCardCancel only wakes a call already blocked; if the thread is between two calls the
        # cancel is lost, so repeat it until the thread is gone.
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            with self._ctx_lock:
                if self._ctx is not None:
                    self._ctx.cancel()
            self._thread.join(0.05)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _emit(self, kind: ReaderEventKind, reader: str | None = None, **kw: Any) -> None:
        try:
            self._sink(ReaderEvent(kind=kind, backend=BACKEND, reader=reader, **kw))
        except Exception:  # a broken subscriber must not kill the watcher
            logger.exception("event sink failed")

    def _run(self) -> None:
        backoff = self.BACKOFF_MIN
        lost_reported = False
        while not self._stop.is_set():
            try:
                ctx = PcscContext()
            except CardError as e:
                if not lost_reported:
                    self._report_lost(str(e))
                    lost_reported = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.BACKOFF_MAX)
                continue
            with self._ctx_lock:
                self._ctx = ctx
            if self._stop.is_set():  # stop() ran before we published the context
                break
            backoff = self.BACKOFF_MIN
            if lost_reported or not self.available:
                self.available = True
                if lost_reported:
                    self._emit(ReaderEventKind.BACKEND_RESTORED)
                lost_reported = False
            try:
                reason = self._watch(ctx)
            except Exception as e:  # noqa: BLE001 - keep watching whatever happens
                logger.exception("PC/SC watcher error")
                reason = str(e)
            with self._ctx_lock:
                self._ctx = None
            ctx.release()
            if self._stop.is_set():
                break
            self._report_lost(reason)
            lost_reported = True
        logger.debug("PC/SC watcher stopped")

    def _report_lost(self, reason: str) -> None:
        self.available = False
        self._emit(ReaderEventKind.BACKEND_LOST, detail=reason)
        for name, (present, _atr, counter) in sorted(self._known.items()):
            if present:
                self._emit(ReaderEventKind.CARD_REMOVED, name, counter=counter)
            self._emit(ReaderEventKind.READER_REMOVED, name)
        self._known.clear()

    def _sync_readers(self, ctx: PcscContext) -> list[tuple[str, int]]:
        names = ctx.list_readers()
        for gone in sorted(set(self._known) - set(names)):
            present, _atr, counter = self._known.pop(gone)
            if present:
                self._emit(ReaderEventKind.CARD_REMOVED, gone, counter=counter)
            self._emit(ReaderEventKind.READER_REMOVED, gone)
        for new in names:
            if new not in self._known:
                self._known[new] = (False, None, None)
                self._emit(ReaderEventKind.READER_ADDED, new)
        return [(n, scard.SCARD_STATE_UNAWARE) for n in names]

    def _watch(self, ctx: PcscContext) -> str:
        """Block in SCardGetStatusChange until pcscd goes away; return why."""
        try:
            reader_states = self._sync_readers(ctx)
        except PcscUnavailable as e:
            return str(e)
        # For the PnP pseudo-reader pcsc-lite keeps the reader count in the upper 16 bits; we
        # start from 0 and feed back what it returns, so the first call settles the count.
        pnp_state = 0
        while not self._stop.is_set():
            states = [(PNP_READER, pnp_state)] + reader_states
            hr, result = scard.SCardGetStatusChange(ctx.handle, scard.INFINITE, states)
            if self._stop.is_set():
                return "stopped"
            if hr in _SERVICE_GONE:
                return f"pcscd went away: {scard.SCardGetErrorMessage(hr)}"
            if hr == scard.SCARD_E_CANCELLED or hr == scard.SCARD_E_TIMEOUT:
                continue
            if hr in (scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE):
                # A reader vanished between two calls: re-list and carry on.
                reader_states = self._sync_readers(ctx)
                continue
            if hr != scard.SCARD_S_SUCCESS:
                return f"SCardGetStatusChange failed: {scard.SCardGetErrorMessage(hr)}"
            relist = False
            new_states: list[tuple[str, int]] = []
            for name, event, atr in result:
                if name == PNP_READER:
                    if event & scard.SCARD_STATE_CHANGED:
                        relist = True
                    pnp_state = event & ~scard.SCARD_STATE_CHANGED
                    continue
                if event & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_IGNORE):
                    relist = True
                    continue
                if event & scard.SCARD_STATE_CHANGED:
                    self._reader_changed(name, event, atr)
                new_states.append((name, event & ~scard.SCARD_STATE_CHANGED))
            reader_states = self._sync_readers(ctx) if relist else new_states
            if relist:
                # Freshly listed readers start UNAWARE; keep the states we already know so
                # that a relist does not re-announce cards that did not change.
                known_state = dict(new_states)
                reader_states = [(n, known_state.get(n, s)) for n, s in reader_states]
        return "stopped"

    def _reader_changed(self, name: str, event: int, atr: Any) -> None:
        present = bool(event & scard.SCARD_STATE_PRESENT)
        counter = (event >> 16) & 0xFFFF
        atr_bytes = bytes(atr) if present and atr else None
        if name not in self._known:
            self._known[name] = (False, None, None)
            self._emit(ReaderEventKind.READER_ADDED, name)
        was_present, old_atr, old_counter = self._known[name]
        # pcsc-lite bumps the counter on every insert and every removal. If it moved further
        # than the visible change explains, cards came and went between two of our calls:
        # report every step, so that subscribers never miss a swap.
        toggles = int(present != was_present)
        if old_counter is not None:
            delta = (counter - old_counter) & 0xFFFF
            if delta > toggles and (delta - toggles) % 2 == 0:
                toggles = delta
        if toggles == 0 and present and atr_bytes != old_atr:
            toggles = 2  # the ATR changed under us: a swap, whatever the counter says
        state = was_present
        for step in range(toggles):
            state = not state
            if state:
                last = step == toggles - 1
                self._emit(
                    ReaderEventKind.CARD_INSERTED, name, atr=atr_bytes if last else None,
                    counter=counter,
                )
            else:
                self._emit(ReaderEventKind.CARD_REMOVED, name, counter=counter)
        self._known[name] = (present, atr_bytes, counter)


class PcscBackend:
    """The PC/SC stack as the reader manager sees it."""

    name = BACKEND

    def __init__(self) -> None:
        self._local = threading.local()
        self._watcher: PcscWatcher | None = None

    def start_watcher(self, sink: EventSink) -> None:
        self._watcher = PcscWatcher(sink)
        self._watcher.start()

    def stop_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    @property
    def available(self) -> bool:
        return bool(self._watcher and self._watcher.available)

    @property
    def watcher_alive(self) -> bool:
        """The watcher thread runs (pcscd may be down: it retries); the systemd watchdog asks."""
        return bool(self._watcher and self._watcher.alive)

    def _context(self) -> PcscContext:
        """A context per calling thread (each reader worker has its own), renewed if stale."""
        ctx: PcscContext | None = getattr(self._local, "ctx", None)
        if ctx is not None and not ctx.is_valid():
            ctx.release()
            ctx = None
        if ctx is None:
            ctx = PcscContext()
            self._local.ctx = ctx
        return ctx

    def release_thread_context(self) -> None:
        ctx: PcscContext | None = getattr(self._local, "ctx", None)
        if ctx is not None:
            ctx.release()
            self._local.ctx = None

    def connect(self, reader: str) -> PcscConnection:
        try:
            return self._context().connect(reader)
        except PcscUnavailable:
            # A context from before a pcscd restart: try once with a fresh one.
            self.release_thread_context()
            return self._context().connect(reader)

    def snapshot(self) -> list[ReaderStatus]:
        """Readers and their cards right now (for `cardd readers` and diag)."""
        ctx = PcscContext()
        try:
            return ctx.statuses(ctx.list_readers())
        finally:
            ctx.release()
