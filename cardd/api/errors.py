# SPDX-License-Identifier: Apache-2.0
"""The one place where cardd errors become HTTP answers.

Pages get the stable code and a message that tells them what to do; never a traceback, a
PC/SC error text or anything from the card.
"""

from __future__ import annotations

import logging

from aiohttp import web

from cardd import errors as E

logger = logging.getLogger(__name__)

_STATUS: dict[type[E.CardError], int] = {
    E.UnsupportedMediaType: 415,
    E.TokenError: 400,
    E.PinIncorrect: 422,
    E.PinBlocked: 422,
    E.UserCancelled: 499,
    E.PinEntryUnavailable: 501,
    E.Pkcs11ModuleMissing: 503,
    E.InvalidInput: 400,
    E.CardInUse: 409,
    E.AlreadyIssued: 409,
    E.LedgerConflict: 409,
    E.CardNotPersonalized: 422,
    E.RecordCorrupt: 422,
    E.RecordForeign: 422,
    E.UnknownNumber: 404,
    E.InvalidTransition: 409,
    E.LedgerUnavailable: 503,
    E.UsageError: 400,
    E.NoReader: 404,
    E.NoCard: 404,
    E.ReaderBusy: 409,
    E.CardRemoved: 409,
    E.CardNotSupported: 422,
    E.ApduError: 502,
    E.CardDataInvalid: 502,
    E.CardMute: 504,
    E.OperationTimeout: 504,
    E.OperationCancelled: 499,
    E.ReaderUnavailable: 503,
    E.BackendUnavailable: 503,
    E.ConfigError: 500,
}

#: what a web page may show; the detailed message stays in the local log
_PUBLIC_MESSAGE: dict[str, str] = {
    "no_reader": "No card reader is connected.",
    "no_card": "Place a card on the reader.",
    "reader_busy": "The reader is busy with another operation; try again.",
    "card_removed": "The card was removed before the operation finished.",
    "card_not_supported": "This card is not supported.",
    "card_data_invalid": "The card's data could not be read; try another card.",
    "apdu_failed": "The card refused the operation.",
    "card_mute": "The card does not answer; place it on the reader again.",
    "timeout": "The operation took too long.",
    "cancelled": "The operation was cancelled.",
    "reader_unavailable": "The reader is no longer available.",
    "pcsc_unavailable": "The smart card service (pcscd) is not running.",
    "backend_unavailable": "The reader service is not available.",
    "invalid_input": "The request is not valid.",
    "bad_nonce": "The challenge (nonce) is not valid: 44 to 128 base64 characters.",
    "origin_mismatch": "The requesting site's origin is not valid for signing.",
    "pin_incorrect": "Wrong PIN.",
    "pin_blocked": "The card's PIN is locked.",
    "user_cancelled": "Cancelled by the card holder.",
    "pin_entry_unavailable": "cardd cannot ask for the PIN: open its PIN page (cardd.js does) or use a PIN-pad reader.",
    "pkcs11_module_missing": "The citizen certificate card software is not installed.",
    "card_in_use": "This card carries another person's library number.",
    "already_issued": "This ID already has a working card; ask for a reissue to replace it.",
    "ledger_conflict": "Another station changed this card number at the same moment; try again.",
    "burn_pending": "An earlier burn for this ID was interrupted; put that card back on the reader.",
    "card_not_personalized": "This card is not prepared for library numbers.",
    "record_corrupt": "The card's library number is damaged; burn it again.",
    "record_foreign": "The card holds data from another system.",
    "unknown_number": "This library number is not in the ledger.",
    "invalid_transition": "This card number cannot be changed that way.",
    "ledger_unavailable": "The issuance ledger is not reachable.",
    "suffix_exhausted": "This ID has used all 100 card numbers; the issuing office must resolve it.",
    "auth_failed": "The card refused the keys.",
    "access_denied": "The card refused the operation.",
    "write_verify_failed": "The card did not keep what was written; try again.",
    "usage_error": "The request is not valid.",
    "gate_unavailable": "The entrance gate does not respond; the decision was not carried out.",
}


def status_for(error: E.CardError) -> int:
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]  # type: ignore[index]
    return 500


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(code, message), status=status, headers=headers)


def from_card_error(error: E.CardError) -> web.Response:
    status = status_for(error)
    logger.info("request failed: %s: %s", error.code, error.message)
    message = _PUBLIC_MESSAGE.get(error.code, "The operation failed.")
    if isinstance(error, (E.InvalidInput, E.UsageError)) and error.code in (
        "invalid_input", "usage_error", "unsupported_media_type", "id_invalid",
        "library_number_invalid",
    ):
        message = error.message  # input errors describe the caller's own input
    body = error_body(error.code, message)
    tries = getattr(error, "tries_left", None)
    if isinstance(error, E.PinIncorrect):
        body["error"]["triesLeft"] = tries  # type: ignore[assignment]
    return web.json_response(body, status=status)
