# SPDX-License-Identifier: Apache-2.0
"""PIN operations: the meeting point of a waiting authenticate call and cardd's own PIN page.

One :class:`PinOperation` per ``POST /v1/moica/authenticate`` that asks for the PIN page. Its id
is chosen by the JavaScript client (128 random bits, base64url) because the popup must be opened
in the click handler *before* the request is sent (popup blockers), so the page's URL cannot wait
for an id from cardd. The id only names the operation; what the page shows (the requesting
origin, the holder's name, the action) comes from this record, never from the URL, and what the
page may do is gated by a per-page-load secret that only a page cardd served holds.

Two sides use an operation:

* the reader's worker thread (:meth:`PinOperation.next_pin`) blocks until the page hands over a
  PIN, the operation is aborted (cancel button, page closed, card removed, the caller went away)
  or its deadline passes. The PIN travels as a ``bytearray`` straight into
  :meth:`cardd.moica.pkcs11.Pkcs11Signer.sign`, which wipes it after C_Login; an aborted
  operation wipes a PIN nobody collected. The PIN is never stored on the record otherwise and
  never logged.
* the event loop (the page's requests, the supervisor in :mod:`cardd.api.moica`) reads the
  state, long-polls for changes and submits the PIN.

States: ``reading`` (the card is being read) → ``waiting_pin`` (the page may send a PIN; after a
wrong one ``error`` says so and ``triesLeft`` how many remain) → ``checking`` (C_Login and C_Sign
run) → ``waiting_pin`` again after a wrong PIN, or ``done`` / ``failed`` (with the error code).
``pinpad`` means the reader's own PIN pad asks; the page only informs.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cardd.errors import CardError, InvalidInput, OperationCancelled, OperationTimeout

#: what a client-chosen operation id looks like: 16–48 bytes of randomness in base64url
OP_ID_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")
#: how long a finished operation stays readable, so its page can show how it ended
KEEP_FINISHED_SECONDS = 60.0
#: bound on live records; beyond it the oldest finished ones go first, then new ones are refused
MAX_OPERATIONS = 512

WAITING_PIN = "waiting_pin"
FINAL_STATES = frozenset({"done", "failed"})


def wipe(buffer: bytearray) -> None:
    for i in range(len(buffer)):
        buffer[i] = 0


@dataclass(frozen=True)
class PinState:
    """What the PIN page is told (never the PIN, never the nonce)."""

    version: int
    state: str
    origin: str
    reader: str
    holder_name: str | None
    action: str
    tries_left: int | None
    error: str | None
    remaining_seconds: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state,
            "origin": self.origin,
            "reader": self.reader,
            "holderName": self.holder_name,
            "action": self.action,
            "triesLeft": self.tries_left,
            "error": self.error,
            "remainingSeconds": self.remaining_seconds,
        }


class PinOperation:
    """One authenticate call waiting for its PIN. Thread-safe; see the module docstring."""

    def __init__(
        self,
        op_id: str,
        origin: str,
        reader: str,
        *,
        action: str,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.op_id = op_id
        self.origin = origin
        self.reader = reader
        self.action = action
        self.clock = clock
        self.created = clock()
        self.deadline = self.created + timeout
        self.finished_at: float | None = None
        self._loop = loop
        self._cond = threading.Condition()
        self._changed = asyncio.Event()
        self._version = 0
        self._state = "reading"
        self._holder: str | None = None
        self._tries_left: int | None = None
        self._error: str | None = None
        self._pin: bytearray | None = None
        self._abort: CardError | None = None
        self._secret: str | None = None
        # the page's heartbeat: open long-polls and when the page was last heard from
        self.page_opened = False
        self.page_polls = 0
        self.page_seen = self.created

    # -- reading ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        with self._cond:
            return self._state

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def snapshot(self) -> PinState:
        with self._cond:
            return PinState(
                version=self._version,
                state=self._state,
                origin=self.origin,
                reader=self.reader,
                holder_name=self._holder,
                action=self.action,
                tries_left=self._tries_left,
                error=self._error,
                remaining_seconds=max(0, int(self.deadline - self.clock())),
            )

    async def changed_since(self, version: int, timeout: float) -> PinState:
        """The state once its version differs from ``version``, or after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            left = end - time.monotonic()
            if snap.version != version or left <= 0:
                return snap
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    # -- the page ---------------------------------------------------------------------------

    def open_page(self) -> str:
        """A fresh secret for a page load; a reloaded page replaces (and disables) the old one."""
        secret = secrets.token_urlsafe(32)
        with self._cond:
            self._secret = secret
        self.page_opened = True
        self.page_seen = self.clock()
        return secret

    def secret_ok(self, secret: object) -> bool:
        with self._cond:
            expected = self._secret
        if expected is None or not isinstance(secret, str):
            return False
        return hmac.compare_digest(secret.encode(), expected.encode())

    def submit(self, pin: bytearray) -> None:
        """Hand a PIN to the waiting worker. Takes ownership of ``pin`` (wiped if refused)."""
        with self._cond:
            if self._state != WAITING_PIN or self._pin is not None or self._abort is not None:
                wipe(pin)
                raise InvalidInput("the PIN cannot be taken now")
            self._pin = pin
            self._set("checking", error=None)
            self._cond.notify_all()

    # -- the worker thread ------------------------------------------------------------------

    def card_ready(self, holder_name: str | None, *, pinpad: bool = False) -> None:
        with self._cond:
            self._holder = holder_name
            self._set("pinpad" if pinpad else WAITING_PIN)

    def next_pin(self, cancel: threading.Event) -> bytearray:
        """Block until the page submits a PIN; the caller owns (and must wipe) the result.

        :raises CardError: the abort reason (``user_cancelled``, ``card_removed``, ...), or
            ``timeout`` when the deadline passes, or ``cancelled`` when the reader operation
            was cancelled (the requesting page went away).
        """
        with self._cond:
            if self._state == "reading":
                self._set(WAITING_PIN)
            while True:
                if self._abort is not None:
                    raise self._abort
                if self._pin is not None:
                    pin, self._pin = self._pin, None
                    return pin
                if cancel.is_set():
                    raise OperationCancelled("the operation was cancelled")
                left = self.deadline - self.clock()
                if left <= 0:
                    raise OperationTimeout("nobody entered the PIN in time")
                # Wake regularly: ``cancel`` is a threading.Event nobody notifies us about.
                self._cond.wait(min(left, 0.25))

    def wrong_pin(self, tries_left: int | None) -> None:
        with self._cond:
            self._tries_left = tries_left
            self._set(WAITING_PIN, error="pin_incorrect")

    # -- either side ------------------------------------------------------------------------

    def abort(self, error: CardError) -> bool:
        """Stop the operation with ``error`` (the first reason wins). False if already over."""
        with self._cond:
            if self._state in FINAL_STATES or self._abort is not None:
                return False
            self._abort = error
            if self._pin is not None:
                wipe(self._pin)
                self._pin = None
            self._cond.notify_all()
            return True

    def finish(self, error_code: str | None) -> None:
        with self._cond:
            if self._state in FINAL_STATES:
                return
            if self._pin is not None:
                wipe(self._pin)
                self._pin = None
            self._set("done" if error_code is None else "failed", error=error_code)
        self.finished_at = self.clock()

    def _set(self, state: str, *, error: str | None = None) -> None:
        """Change the state (called with the condition held) and wake the page's long-polls."""
        self._state = state
        self._error = error
        self._version += 1
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closing
            pass

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()


class PinBroker:
    """The live :class:`PinOperation` records, by id. Used from the event loop only."""

    def __init__(
        self,
        *,
        keep_finished: float = KEEP_FINISHED_SECONDS,
        max_operations: int = MAX_OPERATIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ops: dict[str, PinOperation] = {}
        self._keep = keep_finished
        self._max = max_operations
        self._clock = clock
        self._registered = asyncio.Condition()

    def register(
        self, op_id: object, origin: str, reader: str, *, action: str, timeout: float
    ) -> PinOperation:
        if not isinstance(op_id, str) or not OP_ID_RE.fullmatch(op_id):
            raise InvalidInput("'pinPage' must be 22–64 base64url characters (a random id)")
        self.purge()
        if op_id in self._ops:
            raise InvalidInput("'pinPage' is already in use: make a new random id per call")
        if len(self._ops) >= self._max:
            raise InvalidInput("too many PIN requests are open")
        op = PinOperation(
            op_id,
            origin,
            reader,
            action=action,
            timeout=timeout,
            loop=asyncio.get_running_loop(),
            clock=self._clock,
        )
        self._ops[op_id] = op
        asyncio.ensure_future(self._announce())
        return op

    async def _announce(self) -> None:
        async with self._registered:
            self._registered.notify_all()

    def get(self, op_id: str) -> PinOperation | None:
        self.purge()
        return self._ops.get(op_id)

    async def wait_for(self, op_id: str, timeout: float) -> PinOperation | None:
        """The operation named ``op_id`` once registered (the page may load before the call)."""
        if not OP_ID_RE.fullmatch(op_id):
            return None
        try:
            async with asyncio.timeout(timeout):
                async with self._registered:
                    await self._registered.wait_for(lambda: op_id in self._ops)
        except TimeoutError:
            return None
        return self._ops.get(op_id)

    def purge(self) -> None:
        now = self._clock()
        for op_id, op in list(self._ops.items()):
            if op.finished_at is not None and now - op.finished_at > self._keep:
                del self._ops[op_id]
        if len(self._ops) >= self._max:
            finished = sorted(
                (op for op in self._ops.values() if op.finished_at is not None),
                key=lambda op: op.finished_at or 0.0,
            )
            for op in finished[: len(self._ops) - self._max + 1]:
                del self._ops[op.op_id]

    def __len__(self) -> int:
        return len(self._ops)
