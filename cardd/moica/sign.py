# SPDX-License-Identifier: Apache-2.0
"""The citizen-certificate authentication token: what the API and CLI call to have a card sign.

The card signs ``SHA256(origin UTF-8) || SHA256(nonce UTF-8)`` (64 bytes) with
RSASSA-PKCS1-v1_5 / SHA-256, through PKCS#11 ``CKM_SHA256_RSA_PKCS`` (bridge-security.md §1.1), and
the result is the token of product.md::

    {"format": "cardd-moica:1", "unverifiedCertificate": "<base64 DER>", "algorithm": "RS256",
     "signature": "<base64>", "appVersion": "cardd/<version>"}

Nothing else is ever signed with the card's key: it has no separate authentication key
(moica.md §8.5), so the nonce and origin are checked before the token is touched, and a caller
cannot choose the bytes that get signed. The nonce is hashed as its base64 *string*, not decoded,
as Web eID does. Freshness and single use of the nonce are the verifier's job.
"""

from __future__ import annotations

import base64
import threading
from typing import Any, Protocol

from cardd import __version__
from cardd.errors import InvalidInput
from cardd.moica.pkcs11 import PinSource
from cardd.moica.token import signed_data, validate_nonce, validate_origin

TOKEN_FORMAT = "cardd-moica:1"  # noqa: S105 - the token format name, not a secret
ALGORITHM = "RS256"


class CardSigner(Protocol):
    """What :func:`authenticate` needs; :class:`cardd.moica.pkcs11.Pkcs11Signer` is one."""

    def sign(
        self,
        cert_der: bytes,
        data: bytes,
        pin: PinSource,
        *,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> bytes: ...


def authenticate(
    signer: CardSigner,
    cert_der: bytes,
    origin: str,
    nonce: str,
    pin_source: PinSource,
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Have the card holding ``cert_der`` sign the challenge; the product.md token.

    :param cert_der: the signing certificate read from the card in the chosen reader; the signer
        refuses when the card holding it is not present.
    :param origin: the browser's ``Origin`` header, already allow-listed by the API layer.
    :param nonce: the relying party's challenge, as the page sent it.
    :raises InvalidInput: the origin or nonce is malformed (the card was not touched).
    """
    check_origin(origin)
    check_nonce(nonce)
    if not cert_der:
        raise InvalidInput("no signing certificate")
    signature = signer.sign(
        cert_der, _signed_data(origin, nonce), pin_source, timeout=timeout, cancel=cancel
    )
    return {
        "format": TOKEN_FORMAT,
        "unverifiedCertificate": base64.b64encode(cert_der).decode("ascii"),
        "algorithm": ALGORITHM,
        "signature": base64.b64encode(signature).decode("ascii"),
        "appVersion": f"cardd/{__version__}",
    }


def check_nonce(nonce: str) -> None:
    """44–128 characters of base64; the verifier's own rule (cardd.moica.token), so the signer
    and the verifier cannot drift apart. Raises ``bad_nonce`` before the card is touched."""
    validate_nonce(nonce)


def check_origin(origin: str) -> None:
    """Exactly ``https://host[:port]`` as a browser serialises it (cardd.moica.token's rule)."""
    validate_origin(origin)


def _signed_data(origin: str, nonce: str) -> bytes:
    """``SHA256(origin) || SHA256(nonce)``: the verifier's own construction."""
    return signed_data(origin, nonce)
