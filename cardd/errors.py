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
