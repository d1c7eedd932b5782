# SPDX-License-Identifier: Apache-2.0
"""Burning library numbers into student cards: reserve → write → read back → commit.

Runs on a reader's worker thread with an open connection (cardd.readers.manager). The ledger is
the source of truth; the card only carries the number. Every step that can be interrupted
(card pulled, process killed) leaves a state the next attempt resolves:

- killed after ``reserve``: the number is pending and bound to this card's UID; burning the same
  ID again on the same card resumes it; on another card it is refused until the first card is
  back or the number is voided (``cardd ledger resolve``);
- card pulled between the block writes: the record reads as corrupt (the CRC block is written
  last, cardd.rfid.record.WRITE_ORDER), the ledger stays pending, a retry completes it;
- killed after the write but before ``commit``: the card holds the pending number; a retry
  reads it back and commits.

APDU budget (bench/bench_burn.py): GET UID, AUTHENTICATE (LOAD KEYS only the first time on a
reader), READ block 0 (block 1 too only when block 0 names a number that is live or the
person's own), three UPDATEs, two READs back: 8 once the reader holds the key, 9 when the card
carries a live number (another person's card overwritten on purpose, or a resume).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from cardd.errors import (
    AlreadyIssued,
    AuthenticationFailed,
    BurnPending,
    CardInUse,
    CardNotPersonalized,
    ConfigError,
    OperationCancelled,
    WriteVerificationFailed,
)
from cardd.log import mask_id
from cardd.readers.transport import SmartCardConnection
from cardd.rfid.access import STUDENT_ACCESS, STUDENT_POLICY, KeyType, SectorTrailer
from cardd.rfid.idnumber import LibraryNumber, parse_library_number, validate_id
from cardd.rfid.keys import TRANSPORT_KEY, SectorKeys
from cardd.rfid.ledger import Ledger, NumberRecord, NumberState
from cardd.rfid.mifare import MifareClassicSession, first_block
from cardd.rfid.record import WRITE_ORDER, RecordResult, RecordState, decode_record, encode_record

logger = logging.getLogger(__name__)

_LIVE = (NumberState.ACTIVE, NumberState.LOST, NumberState.PENDING)


@dataclass(frozen=True)
class CardRecord:
    """What `card read` answers: the UID, the record and what the ledger says of it."""

    uid: bytes
    record: RecordResult
    ledger: NumberRecord | None


@dataclass(frozen=True)
class BurnOutcome:
    #: "burned", "resumed" (an interrupted burn completed) or "already_done"
    status: str
    number: str
    suffix: int
    superseded: str | None
    uid: bytes
    apdus: int


class StudentCards:
    """Card-level operations on the student-card record sector."""

    def __init__(self, keys: SectorKeys, ledger: Ledger, *, station: str) -> None:
        if keys.uses_transport_keys and not keys.allow_transport_keys:
            raise ConfigError(
                "the key file uses the public transport keys: anyone's phone could read the "
                "national ID from the card; set allow_transport_keys only for tests and demos"
            )
        self.keys = keys
        self.ledger = ledger
        self.station = station
        # Transport configuration (FF 07 80) leaves key B readable, so it cannot authenticate:
        # on such cards key A reads and writes. Personalized cards (78 77 88) write with key B.
        self.key_type = KeyType.A if keys.key_b == TRANSPORT_KEY else KeyType.B
        # Readers whose volatile key slot we filled: later burns on them skip LOAD KEYS.
        self._readers_with_key: set[str] = set()
        self._lock = threading.Lock()

    # -- helpers -------------------------------------------------------------------------

    def _session(self, connection: SmartCardConnection) -> MifareClassicSession:
        return MifareClassicSession(connection, size=self.keys.size)

    def _authenticate(self, session: MifareClassicSession, reader: str) -> int:
        block = first_block(self.keys.sector)
        slot = session.slot_for(self.key_type)
        with self._lock:
            cached = reader in self._readers_with_key
        if cached:
            try:
                session.authenticate(block, self.key_type, slot)
                return block
            except AuthenticationFailed:
                with self._lock:  # the reader lost its key (replugged, pcscd restarted)
                    self._readers_with_key.discard(reader)
        session.load_key(slot, self.keys.key(self.key_type))
        try:
            session.authenticate(block, self.key_type, slot)
        except AuthenticationFailed:
            raise CardNotPersonalized(
                f"sector {self.keys.sector} does not answer to the configured key "
                f"{self.key_type.name}: a blank card, or keys of another issuer"
            ) from None
        with self._lock:
            self._readers_with_key.add(reader)
        return block

    def _read_record(
        self, session: MifareClassicSession, block: int, *, person: str | None = None
    ) -> RecordResult | None:
        """The record; for a burn (``person`` given) None when block 1 need not be read.

        A burn only needs the CRC (block 1) to trust a number that matters: one still live in
        the ledger, or the person's own. A number that is dead or unknown gets overwritten
        whatever its CRC says, so the burn saves that APDU (bench/bench_burn.py).
        """
        b0 = session.read_block(block)
        if not any(b0):
            return decode_record(b0, bytes(16))  # empty: block 1 cannot change that
        if person is not None and b0[:3] == b"LB\x01":
            candidate = b0[3:15].decode("ascii", "replace")
            if not candidate.startswith(person):
                entry = self.ledger.state(candidate) if candidate.isalnum() else None
                if entry is None or entry.state not in _LIVE:
                    return None
        return decode_record(b0, session.read_block(block + 1))

    # -- operations ----------------------------------------------------------------------

    def read(self, connection: SmartCardConnection, *, reader: str = "") -> CardRecord:
        session = self._session(connection)
        uid = session.uid()
        block = self._authenticate(session, reader)
        record = self._read_record(session, block)
        assert record is not None  # without a person the whole record is always read
        entry = self.ledger.state(str(record.number)) if record.number else None
        return CardRecord(uid, record, entry)

    def burn(
        self,
        connection: SmartCardConnection,
        id_number: str,
        *,
        reissue: bool = False,
        operator: str,
        confirm_overwrite: bool = False,
        reader: str = "",
        cancel: threading.Event | None = None,
    ) -> BurnOutcome:
        person = validate_id(id_number).value
        session = self._session(connection)
        uid = session.uid()
        uid_hex = uid.hex().upper()
        block = self._authenticate(session, reader)
        record = self._read_record(session, block, person=person) or RecordResult(
            RecordState.CORRUPT, reason="a number that is no longer live; not checked"
        )
        on_card = record.number
        entry = self.ledger.state(str(on_card)) if on_card else None

        if on_card is not None and entry is not None and on_card.id_number == person:
            if entry.state is NumberState.ACTIVE and entry.uid == uid_hex:
                logger.info("card %s already carries %s", uid_hex, on_card.masked)
                return BurnOutcome("already_done", str(on_card), on_card.suffix, None, uid,
                                   session.apdu_count)
        elif on_card is not None and entry is not None and entry.state in _LIVE:
            if not confirm_overwrite:
                raise CardInUse(
                    f"the card carries {on_card.masked}, which is {entry.state.value} for "
                    "another person"
                )
        elif record.state is RecordState.FOREIGN and not confirm_overwrite:
            raise CardInUse("the record sector holds data cardd did not write")

        status = "burned"
        try:
            reservation = self.ledger.reserve(
                person, reissue=reissue, station=self.station, operator=operator, uid=uid_hex
            )
        except BurnPending as pending:
            if pending.uid not in (None, uid_hex):
                raise BurnPending(
                    f"a burn of {mask_id(person)} is pending on another card (UID "
                    f"{pending.uid}); put that card on the reader, or void the number with "
                    "`cardd ledger resolve`",
                    number=pending.number, uid=pending.uid,
                ) from None
            assert pending.number is not None
            reservation = self.ledger.resume(
                pending.number, uid_hex, station=self.station, operator=operator
            )
            status = "resumed"
        except AlreadyIssued as issued:
            raise AlreadyIssued(
                f"{mask_id(person)} already has the working card {mask_id(issued.number or '')}"
                " (another card); burn with reissue to replace it",
                number=issued.number, uid=issued.uid,
            ) from None

        number = parse_library_number(reservation.number)
        if cancel is not None and cancel.is_set():
            raise OperationCancelled("cancelled before writing; the number stays pending")
        blocks = encode_record(number)
        for index in WRITE_ORDER:
            session.write_block(block + index, blocks[index], verify=False)
        back = (session.read_block(block), session.read_block(block + 1))
        if back != (blocks[0], blocks[1]):
            raise WriteVerificationFailed(
                "the card did not keep what was written; the number stays pending, try again"
            )
        self.ledger.commit(str(number), uid=uid_hex, station=self.station, operator=operator)
        logger.info("burned %s into card %s (%s)", number.masked, uid_hex, status)
        return BurnOutcome(status, str(number), number.suffix, reservation.supersedes, uid,
                           session.apdu_count)

    def personalize(self, connection: SmartCardConnection, *, reader: str = "") -> bytes:
        """Give a blank card's record sector our keys and access bits (78 77 88).

        A separate, explicit operation (product.md): the trailer is validated before writing, and
        the new keys are proven by authenticating with them afterwards.
        """
        session = self._session(connection)
        uid = session.uid()
        trailer = SectorTrailer(
            key_a=self.keys.key_a, access=STUDENT_ACCESS, gpb=0x69, key_b=self.keys.key_b
        )
        slot_a = session.slot_for(KeyType.A)
        session.load_key(slot_a, TRANSPORT_KEY)
        session.authenticate(first_block(self.keys.sector), KeyType.A, slot_a)
        session.write_trailer(
            self.keys.sector, trailer, writer_key=KeyType.A,
            keys_we_hold={KeyType.A, KeyType.B}, policy=STUDENT_POLICY,
        )
        with self._lock:
            self._readers_with_key.discard(reader)
        return uid

    def report_lost(self, library_number: str, *, operator: str) -> NumberRecord:
        number: LibraryNumber = parse_library_number(library_number)
        return self.ledger.report_lost(str(number), station=self.station, operator=operator)
