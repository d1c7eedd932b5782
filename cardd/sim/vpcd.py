# SPDX-License-Identifier: Apache-2.0
"""The link between a virtual card model and the vpcd driver inside the real pcscd.

Protocol (simulation.md §3.2): one TCP connection per card; every message is a 2-byte
big-endian length and a payload; vpcd speaks first. ``00`` power off, ``01`` power on,
``02`` reset, ``04`` get ATR, anything of two bytes or more is a command APDU. A connected
socket that answers ``04`` is an inserted card; closing the socket removes it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

from cardd.sim.cards.base import VirtualCard
from cardd.sim.cards.faults import CardMute, RemoveCard

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963  # CHANNELID 0x8C7B of Debian's /etc/reader.conf.d/vpcd; slot n = +n

_CTRL_POWER_OFF, _CTRL_POWER_ON, _CTRL_RESET, _CTRL_ATR = 0x00, 0x01, 0x02, 0x04


@dataclass(frozen=True)
class SlotAddress:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT


class CardLink:
    """One inserted virtual card: a socket to vpcd and the thread that answers it."""

    def __init__(self, card: VirtualCard, address: SlotAddress, *, connect_timeout: float = 10.0):
        self.card = card
        self.address = address
        self.apdu_count = 0
        self._sock: socket.socket | None = None
        self._closed = threading.Event()
        self._connected = threading.Event()
        self._muted = False
        self._error: BaseException | None = None
        self._connect_timeout = connect_timeout
        self._thread = threading.Thread(
            target=self._run, name=f"vpcd-card-{address.port}", daemon=True
        )

    def start(self) -> CardLink:
        self._thread.start()
        if not self._connected.wait(self._connect_timeout + 1):
            self.remove()
            raise ConnectionError(
                f"vpcd at {self.address.host}:{self.address.port} did not accept the card "
                "(is pcscd running with the vpcd driver?)"
            )
        if self._error is not None:
            raise ConnectionError(str(self._error))
        return self

    @property
    def inserted(self) -> bool:
        return self._connected.is_set() and not self._closed.is_set()

    def remove(self) -> None:
        """Take the card out of the reader: close the socket (what vpcd sees as removal)."""
        self._closed.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    def _connect(self) -> socket.socket:
        # vpcd opens its port only once pcscd has loaded the driver, so retry for a while.
        deadline = time.monotonic() + self._connect_timeout
        delay = 0.02
        while True:
            try:
                sock = socket.create_connection((self.address.host, self.address.port), timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or self._closed.is_set():
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
        sock.settimeout(None)
        # Measured: without TCP_NODELAY + TCP_QUICKACK every APDU costs ~48 ms (delayed ACK
        # meets Nagle). QUICKACK is not permanent, so _recv_exact re-arms it before each read.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _send(self, sock: socket.socket, payload: bytes) -> None:
        sock.sendall(len(payload).to_bytes(2, "big") + payload)  # one write: prefix + payload

    def _run(self) -> None:
        try:
            sock = self._connect()
        except OSError as e:
            self._error = e
            self._connected.set()
            return
        self._sock = sock
        self._connected.set()
        try:
            while not self._closed.is_set():
                length = int.from_bytes(self._recv_exact(sock, 2), "big")
                msg = self._recv_exact(sock, length)
                if self._muted:
                    continue  # a mute card never answers, not even the ATR poll
                if len(msg) == 1:
                    if msg[0] == _CTRL_ATR:
                        self._send(sock, self.card.atr)
                    elif msg[0] in (_CTRL_POWER_ON, _CTRL_RESET, _CTRL_POWER_OFF):
                        self.card.power_on()
                    continue
                self.apdu_count += 1
                try:
                    response = self.card.process(msg)
                except RemoveCard:
                    logger.debug("fault: card pulled during an APDU")
                    break
                except CardMute:
                    self._muted = True
                    continue
                except Exception:  # noqa: BLE001 - a broken model answers like a broken card
                    logger.exception("virtual card model failed")
                    response = b"\x6f\x00"
                self._send(sock, response)
        except (EOFError, OSError):
            pass
        finally:
            self._closed.set()
            try:
                sock.close()
            except OSError:
                pass


class VirtualReader:
    """One vpcd slot: holds at most one card at a time; insert, remove and swap at run time."""

    def __init__(self, address: SlotAddress) -> None:
        self.address = address
        self._link: CardLink | None = None
        self._lock = threading.Lock()

    @property
    def card(self) -> VirtualCard | None:
        link = self._link
        return link.card if link is not None and link.inserted else None

    @property
    def link(self) -> CardLink | None:
        return self._link

    def insert(self, card: VirtualCard) -> CardLink:
        with self._lock:
            if self._link is not None and self._link.inserted:
                raise RuntimeError(f"slot {self.address.port} already holds a card")
            self._link = CardLink(card, self.address).start()
            return self._link

    def remove(self) -> None:
        with self._lock:
            if self._link is not None:
                self._link.remove()
                self._link = None

    def swap(self, card: VirtualCard, *, gap: float = 0.6) -> CardLink:
        """Remove the current card and insert another.

        vpcd is polled by pcscd every 400 ms; a gap shorter than that would hide the swap from
        pcscd entirely, as it would with a real reader's RF poll.
        """
        self.remove()
        time.sleep(gap)
        return self.insert(card)


class VirtualReaders:
    """The slots of one vpcd driver instance (Debian builds it with two)."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, slots: int = 2):
        self.slots = [VirtualReader(SlotAddress(host, port + i)) for i in range(slots)]

    def __getitem__(self, index: int) -> VirtualReader:
        return self.slots[index]

    def remove_all(self) -> None:
        for slot in self.slots:
            slot.remove()
