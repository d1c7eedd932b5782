# SPDX-License-Identifier: Apache-2.0
"""What an nfcpy reader saw, as cardd's own types: pure logic, no nfcpy import.

:mod:`cardd.readers.nfc` hands the bytes of each sensed target (SENS_RES / SEL_RES / NFCID1 for
Type A, SENSB_RES for Type B, SENSF_RES for FeliCa) to :func:`sensed_tag`; the result becomes a
``tag.tapped`` event in exactly the shape the PC/SC path publishes (cardd.rfid.taps.tap_data), so
the kiosk and ``POST /v1/rfid/wait-tap`` cannot tell the stacks apart:

- ``uid``: every UID form from :func:`cardd.rfid.uid.uid_forms` (the 10-digit little-endian 內碼
  for 4-byte UIDs). Type A: the NFCID1 in anticollision order, which is the order
  ``FF CA 00 00 00`` returns on a PC/SC reader. Type B: the PUPI. FeliCa: the 8-byte IDm
  (nfcpy's ``tag.identifier``); uid_forms only knows the ISO 14443 lengths, so for 8 bytes the
  same rule is applied here (decimals padded to the digits of the largest 8-byte value, 20).
- ``randomUid``: NXP's rule (4 bytes starting 08) for Type A; always false for B and FeliCa,
  where no such marker exists.
- ``cardType`` / ``cardLabel``: the vocabulary of :class:`cardd.readers.identify.CardType`,
  derived from the SAK (NXP AN10833) where PC/SC derives it from the pseudo-ATR.
- ``atr``: None. There is no ATR: nothing was connected to.
- ``technology``: ``106A`` / ``106B`` / ``212F`` / ``424F`` (extra; PC/SC taps lack it).

The tag itself is never activated: the UID comes from anticollision, so MIFARE Classic cards
(EasyCard), which nfcpy cannot talk to beyond that (no CRYPTO1, nfcpy issue #133), tap like any
other card, and nothing is ever written.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from cardd.readers.identify import CardType
from cardd.rfid.uid import UID_LENGTHS, is_random_uid, uid_forms

BACKEND = "nfc"
#: reader names are "nfcpy <configured path>": stable across re-plugging (the bus address is not)
READER_PREFIX = "nfcpy "


def reader_name(path: str) -> str:
    return READER_PREFIX + path


@dataclass(frozen=True)
class SensedTag:
    """One tag as anticollision / polling showed it."""

    technology: str
    identifier: bytes
    card_type: CardType
    label: str
    random_uid: bool = False

    def tap_data(self, reader: str) -> dict[str, Any]:
        return {
            "reader": reader,
            "uid": identifier_forms(self.identifier),
            "randomUid": self.random_uid,
            "atr": None,
            "cardType": self.card_type.value,
            "cardLabel": self.label,
            "technology": self.technology,
        }


def identifier_forms(ident: bytes) -> dict[str, str | int]:
    """uid_forms for ISO 14443 UIDs; the same forms, same padding rule, for other lengths."""
    if len(ident) in UID_LENGTHS:
        return uid_forms(ident).to_dict()
    width = len(str(256 ** len(ident) - 1))
    return {
        "hex": ident.hex().upper(),
        "hexReversed": ident[::-1].hex().upper(),
        "decLE": str(int.from_bytes(ident, "little")).zfill(width),
        "decBE": str(int.from_bytes(ident, "big")).zfill(width),
        "length": len(ident),
    }


# SAK (SEL_RES) values of NXP AN10833 "MIFARE type identification procedure".
_SAK_TYPES: dict[int, tuple[CardType, str]] = {
    0x00: (CardType.MIFARE_ULTRALIGHT, "MIFARE Ultralight / NTAG (Type 2 tag)"),
    0x08: (CardType.MIFARE_CLASSIC_1K, "MIFARE Classic 1K"),
    0x88: (CardType.MIFARE_CLASSIC_1K, "MIFARE Classic 1K"),
    0x09: (CardType.MIFARE_MINI, "MIFARE Mini"),
    0x18: (CardType.MIFARE_CLASSIC_4K, "MIFARE Classic 4K"),
}


def type_a_card(sak: int) -> tuple[CardType, str]:
    if sak in _SAK_TYPES:
        return _SAK_TYPES[sak]
    if sak & 0x40 and not sak & 0x20:
        return CardType.CONTACTLESS_OTHER, "NFC-DEP peer (a phone in peer-to-peer mode)"
    if sak & 0x20:
        # 0x20 DESFire, CPU cards; 0x28 / 0x38 ISO-DEP cards that also emulate Classic 1K / 4K.
        # A PC/SC reader shows all of them with an ISO-DEP ATR, so they get the same type.
        return CardType.ISO14443_4, "ISO 14443-4 (ISO-DEP) card"
    return CardType.CONTACTLESS_OTHER, f"ISO 14443 A card (SAK {sak:02X})"


def sensed_tag(
    technology: str,
    *,
    sens_res: bytes | None = None,
    sel_res: bytes | None = None,
    sdd_res: bytes | None = None,
    rid_res: bytes | None = None,
    sensb_res: bytes | None = None,
    sensf_res: bytes | None = None,
) -> SensedTag | None:
    """The tag behind one sensed target; None for a response cardd cannot name a tag from."""
    if technology.endswith("A"):
        if sens_res and len(sens_res) == 2 and sens_res[0] & 0x1F == 0:
            # Type 1 (Topaz): no anticollision; the UID is in the RID response (HR0 HR1 UID0-3).
            if rid_res and len(rid_res) == 6:
                return SensedTag(
                    technology,
                    bytes(rid_res[2:6]),
                    CardType.CONTACTLESS_OTHER,
                    "Topaz (Type 1 tag)",
                )
            return None
        if not sdd_res or len(sdd_res) not in UID_LENGTHS or not sel_res:
            return None
        uid = bytes(sdd_res)
        card_type, label = type_a_card(sel_res[0])
        return SensedTag(technology, uid, card_type, label, random_uid=is_random_uid(uid))
    if technology.endswith("B"):
        # SENSB_RES: 50 | PUPI (4) | application data (4) | protocol info (3)
        if not sensb_res or len(sensb_res) < 12 or sensb_res[0] != 0x50:
            return None
        return SensedTag(technology, bytes(sensb_res[1:5]), CardType.ISO14443_4, "ISO 14443 B card")
    if technology.endswith("F"):
        # SENSF_RES without its length byte: 01 | IDm (8) | PMm (8) [| system code (2)]
        if not sensf_res or len(sensf_res) < 17 or sensf_res[0] != 0x01:
            return None
        idm = bytes(sensf_res[1:9])
        if idm[:2] == b"\x01\xfe":
            return SensedTag(
                technology,
                idm,
                CardType.CONTACTLESS_OTHER,
                "NFC-DEP peer (a phone in peer-to-peer mode)",
            )
        return SensedTag(technology, idm, CardType.FELICA, "FeliCa")
    return None


class PresenceTracker:
    """Tap once per presence (kiosk.md §5, reader layer).

    A tag is reported when it appears; a tag that stays is seen again at every poll round and
    not reported again; it is gone once a whole poll round missed it *and* it has not been seen
    for ``debounce`` seconds. Both conditions, because a round's length depends on the driver:
    on USB readers a round takes milliseconds, so a card at the edge of the field that drops out
    for one round is still the same tap; over the UDP simulation an empty technology costs a
    1 s timeout, so a time limit alone would call a card that stays "new" at every round.
    Several tags at once are tracked each on its own.
    """

    def __init__(self, debounce: float) -> None:
        self.debounce = debounce
        #: identifier -> (last seen, missed a whole round since)
        self._tags: dict[bytes, tuple[float, bool]] = {}
        self._in_round: set[bytes] = set()

    def seen(self, ident: bytes, now: float) -> bool:
        """Record a sighting; True if it starts a new presence (report it)."""
        self._in_round.add(ident)
        known = self._tags.get(ident)
        self._tags[ident] = (now, False)
        return known is None or self._gone(known, now)

    def round_done(self, now: float) -> None:
        """One poll round over all technologies ended."""
        for ident, (last, missed) in list(self._tags.items()):
            if ident in self._in_round:
                continue
            missed = True
            if self._gone((last, missed), now):
                del self._tags[ident]
            else:
                self._tags[ident] = (last, missed)
        self._in_round.clear()

    def _gone(self, state: tuple[float, bool], now: float) -> bool:
        last, missed = state
        return missed and now - last >= self.debounce

    @property
    def present(self) -> frozenset[bytes]:
        return frozenset(self._tags)


# -- why a device cannot be opened ------------------------------------------------------------

_BLACKLIST = (
    "install cardd's modprobe blacklist udev/cardd-nfc.conf as "
    "/usr/lib/modprobe.d/cardd-nfc.conf (kiosk.md §8) so they stay away after a reboot"
)


def explain_open_error(path: str, err: int | None, detail: str = "") -> str:
    """A message for a device nfcpy could not open, with the fix. ``err`` is nfcpy's errno."""
    if err == errno.EBUSY:
        return (
            f"{path} is busy: another program or a kernel driver holds it. A reader belongs to "
            "one stack: if pcscd should have it, remove it from [nfc] devices; if another "
            "cardd or nfcpy program runs, stop it; if a kernel driver is bound "
            "(`cardd diag` shows it), run `modprobe -r port100 pn533_usb pn533 nfc` and "
            + _BLACKLIST
        )
    if err == errno.EACCES:
        return (
            f"{path}: permission denied on its /dev/bus/usb node. Install cardd's udev rule "
            "(udev/70-cardd.rules as /usr/lib/udev/rules.d/70-cardd.rules, then `udevadm "
            "control --reload && udevadm trigger`; other readers go into 71-cardd-local.rules), "
            "run cardd as a member of group cardd, and allow the device in the unit "
            "(DeviceAllow=char-usb_device rw)"
        )
    if err in (errno.ENODEV, errno.ENOENT, None):
        return (
            f"{path}: no such reader found{(' (' + detail + ')') if detail else ''}. Plug it in "
            "and check `lsusb`; nfcpy supports Sony RC-S380/RC-S330, PN531/PN533 (SCL3711), "
            "PN532 on a serial port and, limited, ACR122U"
        )
    return f"{path}: cannot open: {detail or errno.errorcode.get(err, str(err))}"
