# SPDX-License-Identifier: Apache-2.0
"""Taps: every contactless card that arrives on a reader is read once for its UID and announced
as a ``tag.tapped`` event with all UID forms (product.md "UID forms").

The kiosk and `POST /v1/rfid/wait-tap` listen for these events; nobody polls a reader.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from cardd.errors import CardError
from cardd.events import EventBus
from cardd.readers.manager import ReaderManager
from cardd.readers.transport import SmartCardConnection
from cardd.rfid.uid import is_random_uid, uid_forms

logger = logging.getLogger(__name__)

GET_UID = bytes.fromhex("FFCA000000")


def read_uid(connection: SmartCardConnection, _cancel: threading.Event) -> bytes:
    from cardd.readers.transport import send_expect

    return send_expect(connection, GET_UID)


def tap_data(reader: str, uid: bytes, event: dict[str, Any]) -> dict[str, Any]:
    return {
        "reader": reader,
        "uid": uid_forms(uid).to_dict(),
        "randomUid": is_random_uid(uid),
        "atr": event.get("atr"),
        "cardType": event.get("cardType"),
        "cardLabel": event.get("cardLabel"),
    }


async def publish_taps(manager: ReaderManager, bus: EventBus) -> None:
    """Run for the daemon's lifetime: card.inserted (contactless) → tag.tapped."""
    with bus.subscribe() as sub:
        async for event in sub:
            if event.type != "card.inserted" or not event.data.get("contactless"):
                continue
            reader = event.data["reader"]
            asyncio.ensure_future(_read_and_publish(manager, bus, reader, dict(event.data)))


async def _read_and_publish(manager: ReaderManager, bus: EventBus, reader: str, data: dict[str, Any]) -> None:
    try:
        uid = await manager.run(reader, read_uid, name="tag.read", timeout=5, background=True)
    except CardError as e:
        # A tap too short to read is normal at a kiosk; say so in the log, not as an event.
        logger.info("tap on %s not read: %s", reader, e.code)
        return
    bus.publish("tag.tapped", tap_data(reader, uid, data))
