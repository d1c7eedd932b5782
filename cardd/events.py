# SPDX-License-Identifier: Apache-2.0
"""The one event bus where hardware threads meet the asyncio side.

Threads publish with :meth:`EventBus.publish_threadsafe`; the API, the CLI and the kiosk
subscribe. Each subscriber has a bounded queue: a subscriber that stops reading loses its
oldest events (and is told how many) instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cardd import metrics


@dataclass(frozen=True)
class Event:
    type: str
    data: Mapping[str, Any]
    seq: int
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "seq": self.seq, "time": self.time, **self.data}


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.closed = False

    def _offer(self, event: Event) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            metrics.EVENTS_DROPPED.inc()
        self._queue.put_nowait(event)

    async def get(self, timeout: float | None = None) -> Event:
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    def get_nowait(self) -> Event | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._subscribers.discard(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        while not self.closed:
            yield await self._queue.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._subscribers: set[Subscription] = set()
        self._seq = itertools.count(1)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, maxsize: int = 1024) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    def publish(self, type: str, data: Mapping[str, Any] | None = None) -> Event:
        """Publish from the event loop's own thread."""
        event = Event(type, dict(data or {}), next(self._seq))
        metrics.EVENTS_PUBLISHED.inc(type)
        for sub in list(self._subscribers):
            sub._offer(event)
        return event

    def publish_threadsafe(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Publish from any thread (hardware workers and watchers)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.publish, type, data)
        except RuntimeError:  # the loop is shutting down
            pass
