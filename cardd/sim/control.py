# SPDX-License-Identifier: Apache-2.0
"""A running simulator that `cardd sim ...` commands steer over a Unix socket.

`cardd sim serve` holds the vpcd slots and the virtual cards; `cardd sim insert|remove|swap|
fault|status` send one JSON line each and print the answer. Every inserted card is wrapped in a
:class:`~cardd.sim.cards.faults.FaultyCard` so faults can be armed while it sits in the reader.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from cardd.sim.cards.faults import FaultyCard
from cardd.sim.cards.loader import card_from_spec, load_card
from cardd.sim.vpcd import VirtualReaders

logger = logging.getLogger(__name__)


def default_control_socket() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "cardd-sim.sock"
    return Path(f"/tmp/cardd-sim-{os.getuid()}.sock")  # noqa: S108 - per-user name, 0600 socket


class Simulator:
    """Slots of vpcd plus the cards in them; thread-safe."""

    def __init__(self, host: str, port: int, slots: int) -> None:
        self.readers = VirtualReaders(host, port, slots)
        self._labels: dict[int, str] = {}
        self._lock = threading.Lock()

    def _slot(self, index: Any) -> int:
        if not isinstance(index, int) or not 0 <= index < len(self.readers.slots):
            raise ValueError(f"slot must be 0..{len(self.readers.slots) - 1}")
        return index

    def _card(self, card: Any) -> tuple[FaultyCard, str]:
        if isinstance(card, str):
            return FaultyCard(load_card(Path(card))), Path(card).name
        if isinstance(card, dict):
            return FaultyCard(card_from_spec(card, Path.cwd())), str(card.get("type"))
        raise ValueError("card must be a fixture path or a card spec object")

    def insert(self, slot: int, card: Any) -> dict[str, Any]:
        slot = self._slot(slot)
        faulty, label = self._card(card)
        with self._lock:
            self.readers[slot].insert(faulty)
            self._labels[slot] = label
        return {"slot": slot, "card": label, "atr": faulty.atr.hex().upper()}

    def remove(self, slot: int) -> dict[str, Any]:
        slot = self._slot(slot)
        with self._lock:
            self.readers[slot].remove()
            self._labels.pop(slot, None)
        return {"slot": slot}

    def swap(self, slot: int, card: Any) -> dict[str, Any]:
        slot = self._slot(slot)
        faulty, label = self._card(card)
        with self._lock:
            self.readers[slot].swap(faulty)
            self._labels[slot] = label
        return {"slot": slot, "card": label, "atr": faulty.atr.hex().upper()}

    def fault(self, slot: int, kind: str, **kw: Any) -> dict[str, Any]:
        slot = self._slot(slot)
        card = self.readers[slot].card
        if not isinstance(card, FaultyCard):
            raise ValueError(f"no card in slot {slot}")
        count = int(kw.get("count", 1))
        if kind == "sw":
            card.fail_next(int(str(kw["sw"]), 16), count)
        elif kind == "mute":
            card.mute_next(count)
        elif kind == "remove":
            card.remove_on_next(count, after_processing=bool(kw.get("after", False)))
        elif kind == "delay":
            card.delay_next(float(kw["seconds"]), count)
        elif kind == "chain":
            card.chain_61xx = bool(kw.get("on", True))
        elif kind == "wrong-le":
            card.wrong_le = bool(kw.get("on", True))
        elif kind == "clear":
            card.disarm()
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return {"slot": slot, "fault": kind}

    def status(self) -> dict[str, Any]:
        slots = []
        for i, reader in enumerate(self.readers.slots):
            card = reader.card
            link = reader.link
            slots.append(
                {
                    "slot": i,
                    "port": reader.address.port,
                    "card": self._labels.get(i) if card is not None else None,
                    "kind": card.kind if card is not None else None,
                    "apdus": link.apdu_count if link is not None and card is not None else 0,
                }
            )
        return {"slots": slots}

    def close(self) -> None:
        self.readers.remove_all()


class _Handler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        for line in self.rfile:
            try:
                req = json.loads(line)
                cmd = req.pop("cmd")
                sim = self.server.simulator
                if cmd == "status":
                    result = sim.status()
                elif cmd in ("insert", "swap"):
                    result = getattr(sim, cmd)(req["slot"], req["card"])
                elif cmd == "remove":
                    result = sim.remove(req["slot"])
                elif cmd == "fault":
                    result = sim.fault(req.pop("slot"), req.pop("kind"), **req)
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                answer = {"ok": True, **result}
            except Exception as e:  # noqa: BLE001 - every failure goes back to the client
                answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            self.wfile.write((json.dumps(answer, ensure_ascii=False) + "\n").encode())
            self.wfile.flush()


class ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, simulator: Simulator) -> None:
        self.simulator = simulator
        if path.exists():
            # A socket left by a killed simulator; refuse if a live one still answers.
            try:
                request(path, {"cmd": "status"}, timeout=0.5)
            except OSError:
                path.unlink()
            else:
                raise OSError(f"a simulator is already running on {path}")
        old = os.umask(0o177)  # the socket can insert cards: owner only
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)
        self.path = path

    def server_close(self) -> None:
        super().server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def request(path: Path, message: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall((json.dumps(message) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)
