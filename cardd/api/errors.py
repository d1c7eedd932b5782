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
    E.InvalidInput: 400,
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
    "usage_error": "The request is not valid.",
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
    if isinstance(error, (E.InvalidInput, E.UsageError)):
        message = error.message  # input errors describe the caller's own input
    return json_error(status, error.code, message)
