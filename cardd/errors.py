# SPDX-License-Identifier: Apache-2.0
"""One error hierarchy for all of cardd.

Every class carries a stable string ``code``: the HTTP API returns it, the CLI maps it to an exit
status and a hint, and pages translate it. A published code is never renamed. Messages are for
people and must never contain PINs, keys or full ID numbers.
"""

from __future__ import annotations

from typing import ClassVar


class CardError(Exception):
    """Root of every error cardd raises on purpose."""

    code: ClassVar[str] = "internal_error"
    #: what a person should do next; shown by the CLI and diag, never sent to web pages
    hint: ClassVar[str] = ""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message())

    @classmethod
    def default_message(cls) -> str:
        return cls.code.replace("_", " ")

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.default_message()


class ConfigError(CardError):
    code = "config_invalid"
    hint = "fix the configuration file named in the message"


class BackendUnavailable(CardError):
    """A hardware stack (pcscd, nfcpy, serial) cannot be reached at all."""

    code = "backend_unavailable"


class PcscUnavailable(BackendUnavailable):
    code = "pcsc_unavailable"
    hint = "start pcscd (systemctl start pcscd.socket, or run `pcscd`) and check `cardd diag`"


class NoReader(CardError):
    code = "no_reader"
    hint = "plug in a reader, or name one that `cardd readers` lists"


class ReaderUnavailable(CardError):
    """The reader existed but went away (unplugged, or its stack restarted)."""

    code = "reader_unavailable"


class ReaderBusy(CardError):
    code = "reader_busy"
    hint = "another operation is using this reader; wait for it to finish"


class NoCard(CardError):
    code = "no_card"
    hint = "put a card on the reader"


class CardRemoved(CardError):
    code = "card_removed"
    hint = "keep the card on the reader until the operation finishes"


class CardNotSupported(CardError):
    code = "card_not_supported"


class CardDataInvalid(CardError):
    """The card answered, but what it returned is not what such a card holds."""

    code = "card_data_invalid"
    hint = "the card's data is damaged or it is not the kind of card expected; try another card"


class CardMute(CardError):
    code = "card_mute"
    hint = "the card does not answer; reinsert it or try another card"


class OperationTimeout(CardError):
    # Not named TimeoutError: never shadow builtins (style.md §5).
    code = "timeout"


class OperationCancelled(CardError):
    code = "cancelled"


class ApduError(CardError):
    """The card answered with a status word other than the one expected."""

    code = "apdu_failed"

    def __init__(self, sw: int, data: bytes = b"", message: str | None = None) -> None:
        self.sw = sw
        self.data = data
        super().__init__(message or f"card answered SW={sw:04X} ({sw_name(sw)})")


class InvalidInput(CardError):
    code = "invalid_input"


class UnsupportedMediaType(InvalidInput):
    """State-changing calls take JSON only: that forces a CORS preflight from browsers."""

    code = "unsupported_media_type"


class UsageError(CardError):
    """A command line or request that cannot be carried out as given."""

    code = "usage_error"


_SW_NAMES: dict[int, str] = {
    0x9000: "success",
    0x6282: "end of data reached before Le",
    0x6300: "operation failed",
    0x6581: "memory failure",
    0x6700: "wrong length",
    0x6982: "security status not satisfied",
    0x6983: "authentication method blocked",
    0x6985: "conditions of use not satisfied",
    0x6986: "command not allowed",
    0x6A81: "function not supported",
    0x6A82: "file not found",
    0x6A86: "incorrect P1/P2",
    0x6B00: "wrong parameters P1/P2",
    0x6D00: "instruction not supported",
    0x6E00: "class not supported",
    0x6F00: "no precise diagnosis",
}


def sw_name(sw: int) -> str:
    """A short name for a status word; unknown words get a generic name rather than an error."""
    if sw in _SW_NAMES:
        return _SW_NAMES[sw]
    hi = sw >> 8
    if hi == 0x61:
        return f"{sw & 0xFF} response bytes available"
    if hi == 0x6C:
        return f"wrong Le, exact length {sw & 0xFF}"
    if hi == 0x63 and sw & 0xF0 == 0xC0:
        return f"verification failed, {sw & 0x0F} tries left"
    return "unknown status"


def all_error_classes() -> list[type[CardError]]:
    """Every CardError subclass, for the code table in the API layer and its test."""
    seen: list[type[CardError]] = []
    todo: list[type[CardError]] = [CardError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


# --- card numbers and the student-card record (cardd/rfid/idnumber.py, cardd/rfid/record.py) ---


class IdNumberInvalid(InvalidInput):
    """A national ID / resident certificate number that breaks the format or the check digit."""

    code = "id_invalid"
    hint = "check the ID number for a typing error; the message says which rule it breaks"


class LibraryNumberInvalid(InvalidInput):
    """A library number (ID number + 2-digit suffix) that is not well formed."""

    code = "library_number_invalid"
    hint = "a library number is the 10-character ID number followed by a 2-digit suffix"


class SuffixExhausted(UsageError):
    """A reissue was asked for a library number whose suffix is already 99.

    A UsageError (HTTP 400, message shown to the caller) because the request cannot be carried
    out as given, and the clerk must see why.
    """

    code = "suffix_exhausted"
    hint = "suffix 99 cannot be followed and suffixes are never reused; the issuing office must resolve it"


class RecordCorrupt(CardDataInvalid):
    """The sector holds a cardd record that fails its checks (CRC, version, content)."""

    code = "record_corrupt"
    hint = "the card's library-number record is damaged (often a card pulled during a burn); burn it again"


class RecordForeign(CardDataInvalid):
    """The record sector holds data that cardd did not write."""

    code = "record_foreign"
    hint = "the record sector holds someone else's data; check the configured sector before writing"


# -- MIFARE Classic sessions, sector trailers and key files (cardd.rfid.mifare / access / keys) --


class AuthenticationFailed(ApduError):
    """The card refused GENERAL AUTHENTICATE: wrong key, wrong key type, or a readable key B."""

    code = "auth_failed"
    hint = "the sector does not answer to this key; check the key file and the configured sector"


class AccessDenied(ApduError):
    """Authenticated, but the sector's access bits do not allow this read or write."""

    code = "access_denied"
    hint = "the access bits do not allow this with the key used; key A reads, key B writes"


class UnsafeTrailer(InvalidInput):
    """A sector trailer write was refused before sending: it would damage or lock the sector."""

    code = "unsafe_trailer"
    hint = "fix the access bits or keys named in the message; nothing was written"


class KeyFileError(ConfigError):
    """The MIFARE key file is unsafe or malformed (the message never contains key material)."""

    code = "key_file_invalid"
    hint = "fix the key file named in the message (chmod 600, owner, 12 hex digits per key)"


class WriteVerificationFailed(CardDataInvalid):
    """A block (or trailer) was written, but reading it back did not give what was written."""

    code = "write_verify_failed"
    hint = "keep the card still on the reader and write again; if it repeats, the card is faulty"


# --- the issuance ledger (cardd/rfid/ledger.py, cardd/rfid/ledger_pg.py) ---
# Messages mask ID numbers (A12*****89); the full numbers are attributes for the caller's logic.


class LedgerUnavailable(BackendUnavailable):
    """The ledger database cannot be opened or reached (file, permissions, PostgreSQL down)."""

    code = "ledger_unavailable"
    hint = "check the configured ledger path or URL, the database server, and `cardd diag`"


class LedgerSchemaTooNew(LedgerUnavailable):
    """The ledger was migrated by a newer cardd; this one refuses to write rules it does not know."""

    code = "ledger_schema_too_new"
    hint = "upgrade cardd on this station to the version the other stations run"


class LedgerConflict(CardError):
    """Another station changed this ID first (or kept it locked); reading again may succeed."""

    code = "ledger_conflict"
    hint = "another station is working on this ID; wait a moment and try again"

    def __init__(self, message: str | None = None, *, number: str | None = None) -> None:
        self.number = number
        super().__init__(message)


class BurnPending(LedgerConflict):
    """A burn of this ID was reserved and not finished; ``number`` and the bound ``uid`` say which."""

    code = "burn_pending"
    hint = "a burn of this ID was interrupted: resume it with the same card, or void it"

    def __init__(
        self, message: str | None = None, *, number: str | None = None, uid: str | None = None
    ) -> None:
        self.uid = uid
        super().__init__(message, number=number)


class AlreadyIssued(CardError):
    """The ID already has an active library number (``number``, on card ``uid``)."""

    code = "already_issued"
    hint = "this ID already has a working card; ask for a reissue to replace it"

    def __init__(
        self, message: str | None = None, *, number: str | None = None, uid: str | None = None
    ) -> None:
        self.number = number
        self.uid = uid
        super().__init__(message)


class InvalidTransition(CardError):
    """The number is not in a state that allows this (e.g. committing a void number)."""

    code = "invalid_transition"
    hint = "look at the number's state and history in the ledger before retrying"

    def __init__(
        self,
        message: str | None = None,
        *,
        number: str | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
    ) -> None:
        self.number = number
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(message)


class UidMismatch(CardError):
    """A pending or active number is bound to another card than the one presented."""

    code = "uid_mismatch"
    hint = "put the card this number was burned into on the reader, or void the pending burn"

    def __init__(
        self,
        message: str | None = None,
        *,
        number: str | None = None,
        expected: str | None = None,
        got: str | None = None,
    ) -> None:
        self.number = number
        self.expected = expected
        self.got = got
        super().__init__(message)


class UnknownNumber(CardError):
    """The library number is not in the ledger."""

    code = "unknown_number"
    hint = "check the number; the ledger only knows numbers that were reserved on it"

    def __init__(self, message: str | None = None, *, number: str | None = None) -> None:
        self.number = number
        super().__init__(message)


# --- burning (cardd.rfid.burn) -------------------------------------------------------------


class CardInUse(CardError):
    """The card carries another person's live library number (or data cardd did not write)."""

    code = "card_in_use"
    hint = "this card belongs to someone else; use another card, or confirm the overwrite"


class CardNotPersonalized(CardError):
    """The record sector does not answer to the configured keys (a blank or foreign card)."""

    code = "card_not_personalized"
    hint = "personalize the card first (`cardd card personalize`), or check the key file"


# --- citizen certificate cards (cardd.moica) ---------------------------------------------
# The token verification codes are a published contract (product.md): never rename them.


class TokenError(CardError):
    """A citizen-certificate token failed verification; ``code`` says which rule."""

    code = "invalid_token"


class UnsupportedFormat(TokenError):
    code = "unsupported_format"


class BadNonce(TokenError):
    code = "bad_nonce"


class OriginMismatch(TokenError):
    code = "origin_mismatch"


class SignatureInvalid(TokenError):
    code = "signature_invalid"


class UntrustedChain(TokenError):
    code = "untrusted_chain"


class CertExpired(TokenError):
    code = "cert_expired"


class CertNotYetValid(TokenError):
    code = "cert_not_yet_valid"


class WrongKeyUsage(TokenError):
    code = "wrong_key_usage"


class CertRevoked(TokenError):
    code = "revoked"


class RevocationUnknown(TokenError):
    code = "revocation_unknown"


class IdMismatch(TokenError):
    code = "id_mismatch"


class PinIncorrect(CardError):
    """Wrong PIN. ``tries_left`` when the token says (None: unknown). Never retried by cardd."""

    code = "pin_incorrect"
    hint = "type the PIN again carefully; the card locks after 3 wrong PINs"

    def __init__(self, message: str | None = None, *, tries_left: int | None = None) -> None:
        self.tries_left = tries_left
        super().__init__(message)


class PinBlocked(CardError):
    code = "pin_blocked"
    hint = "the card's PIN is locked; the holder must have it unlocked at a household registration office"


class UserCancelled(CardError):
    code = "user_cancelled"


class PinEntryUnavailable(CardError):
    """No way to collect the PIN for this caller (no PIN pad, and no PIN page yet)."""

    code = "pin_entry_unavailable"


class Pkcs11ModuleMissing(CardError):
    code = "pkcs11_module_missing"
    hint = "install the card's PKCS#11 module (HiCOS or open-gpki-pkcs11) and set [moica] pkcs11_module"


class TrustAnchorInvalid(ConfigError):
    """A trust-anchor file does not match its pinned fingerprint."""

    code = "trust_anchor_invalid"


# -- kiosk -----------------------------------------------------------------------------------


class LibrarySystemUnavailable(BackendUnavailable):
    """The library system (SIP2 server) did not answer: refused connection, timeout, login
    refused or a reply that stayed corrupt after the resend. The kiosk's offline policy decides."""

    code = "library_system_unavailable"



class Sip2LoginRefused(LibrarySystemUnavailable):
    """The SIP2 server answered the login (93) with 940. Still "unavailable" for the kiosk (its
    offline policy applies), but the fix is in the configuration, not the network."""

    code = "sip2_login_refused"
    hint = "check [kiosk.sip2] user, password and location against the library system's SIP2 account"


class Sip2MessageInvalid(CardError):
    """Bytes from (or for) a SIP2 peer that are not a well-formed message; the message says why."""

    code = "sip2_message_invalid"


class Sip2ChecksumMismatch(Sip2MessageInvalid):
    """A SIP2 message whose AZ checksum does not match its bytes (the client asks for a resend).
    ``non_ascii``: the message holds non-ASCII bytes, where the spec leaves the sum undefined."""

    code = "sip2_checksum_mismatch"

    def __init__(self, message: str | None = None, *, non_ascii: bool = False) -> None:
        self.non_ascii = non_ascii
        super().__init__(message)


class GateUnavailable(BackendUnavailable):
    """The entrance gate's relay cannot be driven: not plugged in, held by another program, or a
    write failed. The kiosk still decides and shows the decision; the gate stays shut."""

    code = "gate_unavailable"
    hint = "check the relay's USB cable and [kiosk.gate] port or vid/pid; `cardd diag` lists serial ports"
