# SPDX-License-Identifier: Apache-2.0
"""Fault injection around any virtual card: the misbehaviour host code must survive.

:class:`FaultyCard` wraps a card model and satisfies the same protocol. A test arms faults from
its own thread while the vpcd link thread calls :meth:`FaultyCard.process`:

* one-shot faults: :meth:`~FaultyCard.fail_next` (answer a status word instead),
  :meth:`~FaultyCard.mute_next` (do not answer), :meth:`~FaultyCard.remove_on_next` (the card is
  pulled mid-APDU), :meth:`~FaultyCard.delay_next` (a slow APDU);
* standing behaviours: ``chain_61xx`` (deliver response data through ``61 xx`` / GET RESPONSE)
  and ``wrong_le`` (answer ``6C xx`` when Le does not match the data).

Two of these cannot be expressed as a response, so they are raised as :class:`FaultSignal`
exceptions. The link catches them: :class:`CardMute` means send nothing for this APDU (and stop
answering), :class:`RemoveCard` means close the socket now, without an answer (simulation.md
§3.6: pcscd then returns an empty response and reports the card removed).

Order within one APDU: the delay is slept first; then a removal, which pre-empts the other
one-shot faults (they stay armed); else a mute; else a forced status word; else the inner card.
A removal armed ``after_processing`` lets the inner card answer, then raises.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cardd.sim.cards.base import VirtualCard, sw
from cardd.sim.cards.contactless import (
    INS_GET_RESPONSE,
    SW1_BYTES_AVAILABLE,
    SW1_WRONG_LE,
    CommandApdu,
)

#: Decides from the command APDU whether the card is pulled now.
ApduPredicate = Callable[[bytes], bool]


class FaultSignal(Exception):
    """Raised by :meth:`FaultyCard.process` instead of returning a response.

    Not a :class:`cardd.errors.CardError`: nothing outside the simulator should ever see one.
    """


class CardMute(FaultSignal):
    """The card does not answer this APDU. The link sends nothing (and may stop answering).

    Same name as :class:`cardd.errors.CardMute`, the error a host raises when it meets such a
    card; import this one through the module (``faults.CardMute``) where both are in scope.
    """


class RemoveCard(FaultSignal):
    """The card leaves the field mid-APDU. The link closes the socket without answering."""


@dataclass
class _Removal:
    #: APDUs still to go before the one that triggers (1 = the next one), or None with a predicate
    countdown: int | None
    predicate: ApduPredicate | None
    #: let the inner card process the APDU first (a write lands but its answer is lost)
    after_processing: bool

    def triggers(self, apdu: bytes) -> bool:
        if self.predicate is not None:
            return self.predicate(apdu)
        if self.countdown is None:
            return False
        self.countdown -= 1
        return self.countdown <= 0


@dataclass(frozen=True)
class _PendingChain:
    """Response data not yet fetched with GET RESPONSE, and the status word that ends it."""

    data: bytes
    final_sw: bytes


@dataclass(frozen=True)
class _PendingLeRetry:
    """The answer held back behind ``6C xx``, for the exact retry the host should send."""

    retry: bytes
    response: bytes


class FaultyCard:
    """A virtual card with faults that can be armed at run time, from any thread."""

    def __init__(
        self,
        inner: VirtualCard,
        *,
        chain_61xx: bool = False,
        wrong_le: bool = False,
        chunk_size: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """
        :param inner: the card that answers when no fault applies
        :param chain_61xx: deliver every data-bearing response through ``61 xx`` + GET RESPONSE
        :param wrong_le: answer ``6C xx`` when a command's Le does not match the response length
        :param chunk_size: most bytes one GET RESPONSE delivers (default: as many as its Le asks)
        :param sleep: how :meth:`delay_next` waits (tests may pass a fake)
        """
        self.inner = inner
        self.kind = inner.kind
        self._sleep = sleep
        # Reentrant so a removal predicate (called under the lock) may arm further faults.
        self._lock = threading.RLock()
        self._chain_61xx = chain_61xx
        self._wrong_le = wrong_le
        self._chunk_size = _check_chunk_size(chunk_size)
        self._fail: deque[int] = deque()
        self._mute = 0
        self._delays: deque[float] = deque()
        self._removal: _Removal | None = None
        # Only the link thread touches this (process/power_on); no lock needed.
        self._pending: _PendingChain | _PendingLeRetry | None = None

    # -- the VirtualCard protocol ---------------------------------------------------------

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def power_on(self) -> None:
        """Reset the inner card and drop half-delivered responses. Armed faults stay armed."""
        self._pending = None
        self.inner.power_on()

    def process(self, apdu: bytes) -> bytes:
        with self._lock:
            delay = self._delays.popleft() if self._delays else 0.0
            removal = None
            if self._removal is not None and self._removal.triggers(apdu):
                removal, self._removal = self._removal, None
            # A removal pre-empts the other one-shot faults, which stay armed for later APDUs.
            mute, forced = False, None
            if removal is None:
                if self._mute > 0:
                    mute, self._mute = True, self._mute - 1
                elif self._fail:
                    forced = self._fail.popleft()
            chain, wrong_le, chunk = self._chain_61xx, self._wrong_le, self._chunk_size
        if delay:
            self._sleep(delay)
        if removal is not None and not removal.after_processing:
            self._pending = None
            raise RemoveCard("card removed before answering")
        if mute:
            self._pending = None
            raise CardMute("card does not answer")
        if forced is not None:
            self._pending = None
            return sw(forced)
        response = self._answer(apdu, chain=chain, wrong_le=wrong_le, chunk=chunk)
        if removal is not None:
            self._pending = None
            raise RemoveCard("card removed after processing, before answering")
        return response

    # -- arming (any thread) --------------------------------------------------------------

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer ``status`` (e.g. ``0x6F00``) to the next ``count`` APDUs without processing."""
        if not 0 <= status <= 0xFFFF:
            raise ValueError("a status word is two bytes")
        with self._lock:
            self._fail.extend([status] * _check_count(count))

    def mute_next(self, count: int = 1) -> None:
        """Raise :class:`CardMute` for the next ``count`` APDUs."""
        with self._lock:
            self._mute += _check_count(count)

    def remove_on_next(
        self, when: int | ApduPredicate = 1, *, after_processing: bool = False
    ) -> None:
        """Raise :class:`RemoveCard` on a coming APDU; replaces a removal armed before.

        :param when: ``n`` for the n-th APDU from now (1 = the next), or a predicate on the APDU
            (e.g. ``lambda apdu: apdu[1] == 0xD6`` to pull the card during a write)
        :param after_processing: let the card process the APDU first, so e.g. a write lands but
            its answer is lost
        """
        if callable(when):
            removal = _Removal(None, when, after_processing)
        else:
            removal = _Removal(_check_count(when), None, after_processing)
        with self._lock:
            self._removal = removal

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Wait ``seconds`` before answering each of the next ``count`` APDUs."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        with self._lock:
            self._delays.extend([float(seconds)] * _check_count(count))

    def disarm(self) -> None:
        """Forget every armed one-shot fault (the standing behaviours keep their setting)."""
        with self._lock:
            self._fail.clear()
            self._mute = 0
            self._delays.clear()
            self._removal = None

    @property
    def chain_61xx(self) -> bool:
        with self._lock:
            return self._chain_61xx

    @chain_61xx.setter
    def chain_61xx(self, value: bool) -> None:
        with self._lock:
            self._chain_61xx = value

    @property
    def wrong_le(self) -> bool:
        with self._lock:
            return self._wrong_le

    @wrong_le.setter
    def wrong_le(self, value: bool) -> None:
        with self._lock:
            self._wrong_le = value

    @property
    def chunk_size(self) -> int | None:
        with self._lock:
            return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int | None) -> None:
        with self._lock:
            self._chunk_size = _check_chunk_size(value)

    # -- response shaping (link thread) ---------------------------------------------------

    def _answer(self, apdu: bytes, *, chain: bool, wrong_le: bool, chunk: int | None) -> bytes:
        pending, self._pending = self._pending, None
        # A pending answer is only for the command the host must send next; anything else
        # discards it, as a card discards an unfetched response.
        if isinstance(pending, _PendingChain) and _is_get_response(apdu):
            return self._deliver(pending, apdu, chunk)
        if isinstance(pending, _PendingLeRetry) and apdu == pending.retry:
            return pending.response
        response = self.inner.process(apdu)
        data, status = response[:-2], response[-2:]
        if not data:
            return response
        if chain:
            # chaining wins over wrong_le: the Le that matters is the one in GET RESPONSE
            self._pending = _PendingChain(data, status)
            return _bytes_available(len(data))
        if wrong_le and status == sw(0x9000):
            cmd = CommandApdu.parse(apdu)
            if cmd is not None and cmd.ne is not None and cmd.ne != len(data) and len(data) < 256:
                self._pending = _PendingLeRetry(apdu[:-1] + bytes((len(data),)), response)
                return bytes((SW1_WRONG_LE, len(data)))
        return response

    def _deliver(self, pending: _PendingChain, apdu: bytes, chunk: int | None) -> bytes:
        cmd = CommandApdu.parse(apdu)
        wanted = 256 if cmd is None or cmd.ne is None else cmd.ne
        if chunk is not None:
            wanted = min(wanted, chunk)
        part, rest = pending.data[:wanted], pending.data[wanted:]
        if rest:
            self._pending = _PendingChain(rest, pending.final_sw)
            return part + _bytes_available(len(rest))
        return part + pending.final_sw


def _is_get_response(apdu: bytes) -> bool:
    # Any CLA: hosts send 00 C0, some ACS tools FF C0; neither is a command of the inner cards.
    return len(apdu) in (4, 5) and apdu[1] == INS_GET_RESPONSE and apdu[2:4] == b"\x00\x00"


def _bytes_available(count: int) -> bytes:
    # 61 00 stands for "256 or more", as in ISO 7816-4.
    return bytes((SW1_BYTES_AVAILABLE, min(count, 256) & 0xFF))


def _check_count(count: int) -> int:
    if count < 1:
        raise ValueError("count must be at least 1")
    return count


def _check_chunk_size(size: int | None) -> int | None:
    if size is not None and not 1 <= size <= 256:
        raise ValueError("chunk size must be 1-256")
    return size
