# SPDX-License-Identifier: Apache-2.0
"""The reader manager: reader state from the watchers, one worker per reader, the event bus.

Hardware calls block, so every reader gets exactly one worker thread; two operations can never
interleave APDUs on one card. The asyncio side awaits operations with a timeout; a timed-out or
cancelled operation is told through a ``threading.Event`` and the reader stays busy until its
thread has really finished (a card exchange cannot be interrupted half-way).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from cardd import metrics
from cardd.config import ReadersConfig
from cardd.errors import (
    CardError,
    NoCard,
    NoReader,
    OperationCancelled,
    OperationTimeout,
    ReaderBusy,
    ReaderUnavailable,
    UsageError,
)
from cardd.events import EventBus
from cardd.readers.identify import CardIdentity, identify
from cardd.readers.transport import SmartCardConnection
from cardd.readers.types import ReaderEvent, ReaderEventKind, ReaderKind

logger = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[SmartCardConnection, threading.Event], T]

# Reader names that say "contactless" (PC/SC readers expose PICC and SAM/contact interfaces
# as separate readers; ACS and Identiv name the RF one this way).
_CONTACTLESS_NAME = re.compile(r"PICC|Contactless|\bCL\b|ACR122|NFC", re.IGNORECASE)


class Backend(Protocol):
    name: str

    def start_watcher(self, sink: Callable[[ReaderEvent], None]) -> None: ...
    def stop_watcher(self) -> None: ...
    @property
    def available(self) -> bool: ...
    def connect(self, reader: str) -> Any: ...
    def release_thread_context(self) -> None: ...


@dataclass(frozen=True)
class ReaderInfo:
    name: str
    backend: str
    kind: ReaderKind
    card_present: bool = False
    atr: bytes | None = None
    identity: CardIdentity | None = None
    busy: bool = False
    #: what holds the reader while busy (an operation name), for diag
    busy_with: str | None = None

    def to_dict(self) -> dict[str, Any]:
        ident = self.identity
        return {
            "name": self.name,
            "backend": self.backend,
            "kind": self.kind.value,
            "cardPresent": self.card_present,
            "atr": self.atr.hex().upper() if self.atr else None,
            "cardType": ident.card_type.value if ident else None,
            "cardLabel": ident.label if ident else None,
            "busy": self.busy,
        }


class _Worker:
    def __init__(self, backend: Backend, reader: str) -> None:
        self.backend = backend
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"cardd-reader[{reader}]")
        self.busy_with: str | None = None

    def shutdown(self) -> None:
        # Release this thread's PC/SC context on the thread that owns it, then let it end.
        try:
            self.executor.submit(self.backend.release_thread_context)
        except RuntimeError:
            pass
        self.executor.shutdown(wait=False, cancel_futures=True)


def reader_kind(name: str, identity: CardIdentity | None, configured: dict[str, str]) -> ReaderKind:
    if name in configured:
        return ReaderKind(configured[name])
    if _CONTACTLESS_NAME.search(name):
        return ReaderKind.CONTACTLESS
    if identity is not None:
        return ReaderKind.CONTACTLESS if identity.contactless else ReaderKind.CONTACT
    return ReaderKind.UNKNOWN


class ReaderManager:
    def __init__(
        self,
        backends: list[Backend],
        bus: EventBus,
        config: ReadersConfig | None = None,
    ) -> None:
        self._backends = {b.name: b for b in backends}
        self._bus = bus
        self._config = config or ReadersConfig()
        self._readers: dict[str, ReaderInfo] = {}
        self._workers: dict[str, _Worker] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state_changed: asyncio.Condition | None = None  # created in start(): needs a loop
        self._stopped = False

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._bus.bind(self._loop)
        self._state_changed = asyncio.Condition()
        for backend in self._backends.values():
            backend.start_watcher(self._on_event_from_thread)

    async def stop(self) -> None:
        self._stopped = True
        for backend in self._backends.values():
            await asyncio.to_thread(backend.stop_watcher)
        for worker in self._workers.values():
            worker.shutdown()
        self._workers.clear()

    def backend_states(self) -> dict[str, str]:
        return {n: ("up" if b.available else "down") for n, b in self._backends.items()}

    # -- state from the watchers ----------------------------------------------------------

    def _on_event_from_thread(self, event: ReaderEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._on_event, event)
        except RuntimeError:
            pass  # loop closing

    def _on_event(self, event: ReaderEvent) -> None:
        if self._stopped:
            return
        name = event.reader
        if name is not None and name in self._config.ignore:
            return
        kind = event.kind
        data: dict[str, Any] = {"backend": event.backend}
        if kind is ReaderEventKind.READER_ADDED and name:
            rkind = reader_kind(name, None, self._config.kinds)
            hinted = (event.data or {}).get("kind")
            if hinted and name not in self._config.kinds:
                # A backend that knows what its readers are says so (serial readers: "serial").
                rkind = ReaderKind(hinted)
            info = ReaderInfo(name, event.backend, rkind)
            self._readers[name] = info
            old = self._workers.pop(name, None)
            if old:
                old.shutdown()
            self._workers[name] = _Worker(self._backends[event.backend], name)
            data.update(reader=name, kind=info.kind.value)
        elif kind is ReaderEventKind.READER_REMOVED and name:
            self._readers.pop(name, None)
            worker = self._workers.pop(name, None)
            if worker:
                worker.shutdown()
            data.update(reader=name)
        elif kind is ReaderEventKind.CARD_INSERTED and name in self._readers:
            identity = identify(event.atr) if event.atr else None
            info = self._readers[name]
            kind_now = info.kind
            if kind_now is ReaderKind.UNKNOWN or name not in self._config.kinds:
                kind_now = reader_kind(name, identity, self._config.kinds)
            self._readers[name] = replace(
                info, card_present=True, atr=event.atr, identity=identity, kind=kind_now
            )
            if identity is not None and identity.contactless:  # a tap (cardd.rfid.taps reads it)
                metrics.TAPS.inc(event.backend)
            data.update(reader=name, atr=event.atr.hex().upper() if event.atr else None)
            if identity is not None:
                data.update(
                    cardType=identity.card_type.value,
                    cardLabel=identity.label,
                    contactless=identity.contactless,
                )
        elif kind is ReaderEventKind.CARD_REMOVED and name in self._readers:
            info = self._readers[name]
            self._readers[name] = replace(info, card_present=False, atr=None, identity=None)
            data.update(reader=name)
        elif kind in (ReaderEventKind.TAG_TAPPED, ReaderEventKind.BARCODE_SCANNED) and name in self._readers:
            # Readers that report reads (nfcpy, serial) hold no card to connect to: the read
            # itself is the event, published like a PC/SC tap (reader and backend added here).
            data.update(event.data or {})
            data.update(reader=name)
            if kind is ReaderEventKind.TAG_TAPPED:
                metrics.TAPS.inc(event.backend)
        elif kind in (ReaderEventKind.BACKEND_LOST, ReaderEventKind.BACKEND_RESTORED):
            if event.detail:
                data["detail"] = event.detail
        else:
            return
        if event.counter is not None:
            data["counter"] = event.counter
        self._bus.publish(kind.value, data)
        self._notify()

    def _notify(self) -> None:
        cond = self._state_changed
        if cond is None:
            return

        async def _wake() -> None:
            async with cond:
                cond.notify_all()

        asyncio.ensure_future(_wake())

    # -- queries ----------------------------------------------------------------------------

    def readers(self) -> list[ReaderInfo]:
        out = []
        for name in sorted(self._readers):
            info = self._readers[name]
            worker = self._workers.get(name)
            busy_with = worker.busy_with if worker else None
            out.append(replace(info, busy=busy_with is not None, busy_with=busy_with))
        return out

    def reader_dicts(self) -> list[dict[str, Any]]:
        """``[r.to_dict() for r in readers()]`` without copying each ReaderInfo: GET /v1/readers
        answers this on every call, and a dataclasses.replace() per reader was its largest cost."""
        out = []
        for name in sorted(self._readers):
            d = self._readers[name].to_dict()
            worker = self._workers.get(name)
            d["busy"] = worker is not None and worker.busy_with is not None
            out.append(d)
        return out

    def reader(self, name: str) -> ReaderInfo:
        for info in self.readers():
            if info.name == name:
                return info
        raise NoReader(f"no reader named {name!r}")

    def pick_reader(
        self, name: str | None = None, *, kind: ReaderKind | None = None, need_card: bool = True
    ) -> str:
        """The reader an operation should use: the named one, or the only fitting one."""
        if name is not None:
            info = self.reader(name)
            if need_card and not info.card_present:
                raise NoCard(f"no card in {name!r}")
            return name
        candidates = [
            r for r in self._readers.values()
            if (kind is None or r.kind in (kind, ReaderKind.UNKNOWN))
        ]
        if not candidates:
            raise NoReader("no reader connected" if not self._readers else "no fitting reader")
        with_card = [r for r in candidates if r.card_present]
        if need_card:
            if not with_card:
                raise NoCard("no card on any reader")
            if len(with_card) > 1:
                raise UsageError("cards on several readers: name the reader to use")
            return with_card[0].name
        return (with_card or candidates)[0].name

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until the reader state satisfies ``predicate`` (or the timeout passes)."""
        cond = self._state_changed
        assert cond is not None, "start() the manager first"
        try:
            async with asyncio.timeout(timeout):
                async with cond:
                    await cond.wait_for(predicate)
            return True
        except TimeoutError:
            return False

    # -- operations -------------------------------------------------------------------------

    async def run(
        self,
        reader: str,
        operation: Operation[T],
        *,
        name: str = "operation",
        timeout: float | None = None,
        wait_if_busy: bool = False,
        background: bool = False,
    ) -> T:
        """Run ``operation(connection, cancel_event)`` on the reader's worker thread.

        Raises :class:`ReaderBusy` when another operation holds the reader (unless
        ``wait_if_busy``), :class:`OperationTimeout` after ``timeout`` seconds. A ``background``
        operation (reading the UID of a tap) does not mark the reader busy: operations that
        arrive meanwhile queue behind it on the worker instead of being refused.
        """
        worker = self._workers.get(reader)
        if worker is None:
            raise NoReader(f"no reader named {reader!r}")
        if worker.busy_with is not None and not wait_if_busy:
            raise ReaderBusy(f"{reader!r} is busy with {worker.busy_with}")
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        timeout = self._config.operation_timeout if timeout is None else timeout
        backend = worker.backend
        started = time.monotonic()

        def _job() -> T:
            if cancel.is_set():
                raise OperationCancelled("cancelled before it started")
            connection = backend.connect(reader)
            try:
                return operation(connection, cancel)
            finally:
                try:
                    connection.close()
                except CardError:
                    pass

        def _done(_fut: object) -> None:
            if not background:
                try:
                    loop.call_soon_threadsafe(self._release, reader, worker)
                except RuntimeError:  # the loop has closed (process ending): nobody to tell
                    pass

        if not background:
            worker.busy_with = name
            self._bus.publish("operation.started", {"reader": reader, "operation": name})
        result = "error"
        try:
            fut = worker.executor.submit(_job)
        except RuntimeError:
            if not background:
                worker.busy_with = None
            raise ReaderUnavailable(f"{reader!r} went away") from None
        fut.add_done_callback(_done)
        try:
            value = await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
            result = "ok"
            return value
        except TimeoutError:
            cancel.set()
            result = "timeout"
            raise OperationTimeout(f"{name} on {reader!r} took longer than {timeout:g} s") from None
        except asyncio.CancelledError:
            cancel.set()
            result = "cancelled"
            raise
        except CardError as e:
            result = e.code
            raise
        finally:
            # Every operation is counted, background ones (a tap's UID read) too.
            metrics.record_operation(name, result, time.monotonic() - started)
            if not background:
                self._publish_finished(reader, name, result, started)

    def _publish_finished(self, reader: str, name: str, result: str, started: float) -> None:
        self._bus.publish(
            "operation.finished",
            {
                "reader": reader, "operation": name, "result": result,
                "ms": round((time.monotonic() - started) * 1000, 3),
            },
        )

    def _release(self, reader: str, worker: _Worker) -> None:
        worker.busy_with = None
        self._notify()
