# SPDX-License-Identifier: Apache-2.0
"""Verifying a citizen-certificate token, and the one-time nonces a relying party issues.

Order (Web eID ``AuthTokenValidatorImpl``, bridge-security.md §1.4); the first failing step
decides the one error raised:

0. caller inputs: the expected origin (``origin_mismatch`` if malformed) and the session nonce
   (``bad_nonce`` if not 44–128 base64 characters). Checked first because no token can pass
   with them and a broken relying-party configuration must not cost an OCSP request.
1. parse and format (:func:`cardd.moica.token.parse_token`): ``invalid_token`` /
   ``unsupported_format``.
2. purpose: keyUsage present with digitalSignature; not a CA, no keyCertSign; an EKU, if
   present, contains clientAuth (Web eID ``SubjectCertificatePurposeValidator``). The MOICA
   encryption certificate (keyEncipherment only) fails here: ``wrong_key_usage``.
3. issuer: the anchor whose SKI equals the leaf's AKI, and whose subject equals the leaf's
   issuer. MOICA G2 and G3 share one DN, so a lookalike CA with that DN and another key finds
   no anchor (or fails the signature in 4): ``untrusted_chain``.
4. path at ``now``: leaf validity first (``cert_expired`` / ``cert_not_yet_valid``), then the
   selected anchor's (``untrusted_chain``). Like Web eID, when both are out of date the user
   certificate is reported, and an unrelated expired anchor never matters. Then the path check
   proper (below): ``untrusted_chain``.
5. revocation through :class:`~cardd.moica.types.RevocationChecker`: ``revoked``;
   ``revocation_unknown`` when unknown under ``REQUIRE`` (accepted under ``ALLOW_OFFLINE``, the
   method recorded). No checker configured is allowed only under ``ALLOW_OFFLINE``. A checker
   that raises instead of answering fails closed (``revocation_unknown``) under both policies.
6. signature: RS256 over ``signed_data(expected_origin, nonce)`` with the leaf's RSA key:
   ``signature_invalid``. A token signed for another nonce or another origin fails here and
   only here: the verifier rebuilds the signed data from its own inputs, and an RSA failure
   cannot say which input differed. So a wrong origin is ``signature_invalid``, not
   ``origin_mismatch``; that code means the expected origin itself is malformed (step 0).
7. identity: subject CN and a 16-digit serialNumber must be present (``invalid_token``), and
   with ``id_number`` its last four characters must equal the SDA value, ignoring case
   (``id_mismatch``).

Path validation. ``cryptography.x509.verification`` (cryptography ≥ 45) does the path check,
with the AKI-selected MOICA certificate as the only member of the store, no intermediates
and ``max_chain_depth(0)``: the path is exactly leaf → anchor. Its :class:`ClientVerifier` is
built for TLS clients, and its default end-entity policy requires a subjectAltName, which
citizen certificates lack. cryptography ≥ 45 lets the extension policies be replaced, so:

* the CA policy stays ``ExtensionPolicy.webpki_defaults_ca()``: it accepts certificates with
  the real MOICA G2 and G3 extension profiles (tested with test CAs cloned from them);
* the end-entity policy is ``ExtensionPolicy.permit_all()`` plus the purpose rules of step 2
  (keyUsage digitalSignature required, not a CA, EKU clientAuth if present). ``permit_all``
  still refuses unknown critical extensions, and no EKU is demanded (MOICA certs carry none,
  moica.md §5).

What cryptography then checks: the anchor's signature over the leaf (RSA keys ≥ 2048 bits,
allowed algorithms), validity of both at ``now``, issuer/subject name chaining, the anchor's
basicConstraints/keyUsage, and critical extensions. Steps 2–4 repeat the checks whose failures
need their own error codes, so the verifier is the final authority, not the only one. Its
failures all become ``untrusted_chain``: its messages are not a stable interface.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cardd.errors import (
    CertExpired,
    CertNotYetValid,
    CertRevoked,
    IdMismatch,
    RevocationUnknown,
    SignatureInvalid,
    TokenError,
    UntrustedChain,
    WrongKeyUsage,
)
from cardd.moica.profile import (
    certificate_serial_hex,
    is_subject_serial_number,
    read_id_last4,
    subject_attribute,
)
from cardd.moica.token import (
    load_token_certificate,
    parse_token_fields,
    signed_data,
    validate_nonce,
    validate_origin,
)
from cardd.moica.trust import TrustAnchor, TrustStore, authority_key_id
from cardd.moica.types import (
    RevocationChecker,
    RevocationPolicy,
    RevocationResult,
    RevocationStatus,
)

logger = logging.getLogger(__name__)

MIN_RSA_KEY_BITS = 2048
NONCE_TTL_SECONDS = 300.0
NONCE_BYTES = 32


@dataclass(frozen=True)
class VerificationResult:
    """A verified token. ``repr`` shows no personal data, so a stray log line leaks none."""

    #: subject CN, UTF-8 (usually Chinese)
    holder_name: str = field(repr=False)
    #: last four national-ID characters from SDA 2.16.886.1.100.2.51; None if absent
    id_last4: str | None = field(repr=False)
    #: subject serialNumber: 16 digits, opaque, not the national ID
    subject_serial_number: str = field(repr=False)
    #: certificate serial, upper-case hex of even length
    certificate_serial: str
    #: "G2", "G3" or "test"
    generation: str
    #: "ocsp", "crl", "crl-cached" or "none" (RevocationResult.method)
    revocation_method: str
    #: GOOD, or UNKNOWN when ALLOW_OFFLINE let the token through without an answer
    revocation_status: RevocationStatus
    not_after: datetime
    certificate: x509.Certificate = field(repr=False, compare=False)


def verify_token(
    token: str | bytes,
    *,
    expected_origin: str,
    nonce: str,
    trust: TrustStore,
    revocation: RevocationChecker | None,
    policy: RevocationPolicy = RevocationPolicy.REQUIRE,
    now: datetime | None = None,
    id_number: str | None = None,
) -> VerificationResult:
    """Verify ``token`` against the relying party's own origin and session nonce.

    Consume the nonce from the session's :class:`NonceStore` *before* calling this, so a
    token is never verified twice against one nonce.

    :param expected_origin: the relying party's configured origin, ``https://host[:port]``;
        never taken from the request or the token.
    :param nonce: the nonce this session was issued.
    :param revocation: the OCSP/CRL checker; ``None`` means not configured, which only
        ``ALLOW_OFFLINE`` accepts.
    :param now: the verification time (aware; naive means UTC); defaults to the current time.
    :param id_number: the national ID typed into the form, compared by its last four characters.
    :raises TokenError: exactly one of its subclasses (or itself: ``invalid_token``); see the
        module docstring for which step raises which.
    """
    moment = _utc(now)
    policy = RevocationPolicy(policy)
    origin = validate_origin(expected_origin)
    validate_nonce(nonce)

    parsed = parse_token_fields(token)
    facts = _cached_facts(trust, parsed.certificate_der)
    if facts is None:
        leaf = load_token_certificate(parsed.certificate_der)
        _check_purpose(leaf)
        anchor = _select_anchor(leaf, trust)
        _check_validity(leaf, anchor, moment)
        _validate_path(leaf, anchor, moment)
        facts = _leaf_facts(leaf, anchor)
        _remember_facts(trust, parsed.certificate_der, facts)
    leaf, anchor = facts.leaf, facts.anchor
    _check_validity(leaf, anchor, moment)
    status = _check_revocation(leaf, anchor, revocation, policy, moment)
    _check_signature(facts.public_key, parsed.signature, signed_data(origin, nonce))
    holder_name, serial_number = facts.holder_name, facts.serial_number
    if not holder_name:
        raise TokenError("the certificate names no holder (subject CN)")
    if serial_number is None or not is_subject_serial_number(serial_number):
        raise TokenError("the certificate's subject serialNumber is not 16 digits")
    if id_number is not None:
        _check_id(id_number, facts.id_last4)

    result = VerificationResult(
        holder_name=holder_name,
        id_last4=facts.id_last4,
        subject_serial_number=serial_number,
        certificate_serial=facts.certificate_serial,
        generation=anchor.generation,
        revocation_method=status.method,
        revocation_status=status.status,
        not_after=leaf.not_valid_after_utc,
        certificate=leaf,
    )
    logger.info("token verified: %r", result)
    return result


class NonceStore:
    """One-time challenge nonces for a relying party (Web eID ``ChallengeNonceStore``).

    ``issue()`` returns 32 CSPRNG bytes in base64 (44 characters); ``consume()`` removes the
    nonce *before* judging it, so a nonce is single use even when the attempt fails. Expiry is
    judged on this server's monotonic clock, never on anything the client says. Optionally a
    nonce is bound to a session key (stops one session's nonce being used in another).

    Thread-safe. At most ``max_outstanding`` unexpired nonces are kept; past that the oldest is
    dropped, so a flood of ``issue()`` calls costs memory only up to that bound.
    """

    def __init__(
        self,
        *,
        ttl: float = NONCE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        nonce_bytes: int = NONCE_BYTES,
        max_outstanding: int = 10_000,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if nonce_bytes < NONCE_BYTES:
            raise ValueError(f"nonces need at least {NONCE_BYTES} random bytes")
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be positive")
        self._ttl = float(ttl)
        self._clock = clock
        self._nonce_bytes = nonce_bytes
        self._max = max_outstanding
        self._lock = threading.Lock()
        # insertion order == issue order, which is what purging and eviction rely on
        self._issued: dict[str, tuple[float, str | None]] = {}

    def issue(self, *, session: str | None = None) -> str:
        nonce = base64.b64encode(secrets.token_bytes(self._nonce_bytes)).decode("ascii")
        with self._lock:
            now = self._clock()
            self._purge(now)
            while len(self._issued) >= self._max:
                self._issued.pop(next(iter(self._issued)))
            self._issued[nonce] = (now, session)
        return nonce

    def consume(self, nonce: str, *, session: str | None = None) -> bool:
        """True once for a nonce this store issued, within its TTL, to the same session."""
        if not isinstance(nonce, str):
            return False
        with self._lock:
            entry = self._issued.pop(nonce, None)
            now = self._clock()
        if entry is None:
            return False
        issued_at, bound_session = entry
        if now - issued_at > self._ttl:
            return False
        return bound_session == session

    def __len__(self) -> int:
        with self._lock:
            return len(self._issued)

    def _purge(self, now: float) -> None:
        for nonce, (issued_at, _) in list(self._issued.items()):
            if now - issued_at <= self._ttl:
                break  # the rest were issued later
            del self._issued[nonce]


# -- steps ----------------------------------------------------------------------------------


def _check_purpose(leaf: x509.Certificate) -> None:
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise WrongKeyUsage("the certificate has no key usage") from None
    _require_signing_usage(usage)
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    _require_not_ca(constraints)
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    _require_client_auth_if_eku(eku)


def _select_anchor(leaf: x509.Certificate, trust: TrustStore) -> TrustAnchor:
    key_id = authority_key_id(leaf)
    if key_id is None:
        raise UntrustedChain("the certificate has no authority key identifier")
    anchor = trust.anchor_for_key_id(key_id)
    if anchor is None:
        raise UntrustedChain("the certificate was not issued by a trusted MOICA CA")
    if leaf.issuer != anchor.certificate.subject:
        raise UntrustedChain("the certificate's issuer name does not match its MOICA CA")
    return anchor


def _check_validity(leaf: x509.Certificate, anchor: TrustAnchor, moment: datetime) -> None:
    if moment < leaf.not_valid_before_utc:
        raise CertNotYetValid("the certificate is not yet valid")
    if moment > leaf.not_valid_after_utc:
        raise CertExpired("the certificate has expired")
    ca = anchor.certificate
    if not ca.not_valid_before_utc <= moment <= ca.not_valid_after_utc:
        raise UntrustedChain(f"the issuing CA {anchor.name} is not valid at {moment:%Y-%m-%d}")


@dataclass(frozen=True)
class _LeafFacts:
    """What a certificate that passed every certificate-level check says; cached per DER.

    Purpose, issuer selection and the path to a fixed anchor do not change for the same bytes;
    what does change (time, revocation, the token's signature, the ID typed on the form) is
    checked on every call.
    """

    leaf: x509.Certificate
    anchor: TrustAnchor
    public_key: object
    holder_name: str | None
    serial_number: str | None
    id_last4: str | None
    certificate_serial: str


# Per trust store (weakly held, so a store dropped by its owner takes its cache along), then per
# certificate DER. Bounded; oldest dropped first.
_FACTS: weakref.WeakKeyDictionary[TrustStore, dict[bytes, _LeafFacts]] = weakref.WeakKeyDictionary()
_FACTS_MAX = 4096
_FACTS_LOCK = threading.Lock()


def _cached_facts(trust: TrustStore, der: bytes) -> _LeafFacts | None:
    with _FACTS_LOCK:
        per_store = _FACTS.get(trust)
        return per_store.get(der) if per_store is not None else None


def _remember_facts(trust: TrustStore, der: bytes, facts: _LeafFacts) -> None:
    with _FACTS_LOCK:
        per_store = _FACTS.setdefault(trust, {})
        if len(per_store) >= _FACTS_MAX:
            per_store.pop(next(iter(per_store)))
        per_store[der] = facts


def _leaf_facts(leaf: x509.Certificate, anchor: TrustAnchor) -> _LeafFacts:
    # Raw values only: they are judged in verify_token's order (after the signature).
    return _LeafFacts(
        leaf, anchor, leaf.public_key(),
        subject_attribute(leaf.subject, NameOID.COMMON_NAME),
        subject_attribute(leaf.subject, NameOID.SERIAL_NUMBER),
        read_id_last4(leaf), certificate_serial_hex(leaf),
    )


def _validate_path(leaf: x509.Certificate, anchor: TrustAnchor, moment: datetime) -> None:
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([anchor.certificate]))
        .time(moment)
        .max_chain_depth(0)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=_EE_POLICY
        )
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, [])
    except verification.VerificationError as exc:
        logger.info("path validation failed: %s", exc)
        raise UntrustedChain("the certificate does not chain to its MOICA CA") from exc
    if len(verified.chain) != 2 or verified.chain[-1] != anchor.certificate:
        raise UntrustedChain("unexpected certificate path")  # defensive: depth 0, one anchor


def _check_revocation(
    leaf: x509.Certificate,
    anchor: TrustAnchor,
    checker: RevocationChecker | None,
    policy: RevocationPolicy,
    moment: datetime,
) -> RevocationResult:
    if checker is None:
        if policy is RevocationPolicy.ALLOW_OFFLINE:
            logger.warning("revocation not checked: no checker configured (allow-offline)")
            return RevocationResult(RevocationStatus.UNKNOWN, "none", "not configured")
        raise RevocationUnknown("revocation checking is not configured")
    try:
        result = checker.check(leaf, anchor.certificate, now=moment)
    except TokenError:
        raise
    except Exception as exc:
        # A checker reports failures as UNKNOWN; raising is a broken checker, and letting
        # that through under allow-offline would fail open on a bug.
        logger.error("revocation checker raised %s", type(exc).__name__, exc_info=True)
        raise RevocationUnknown("the revocation check failed") from exc
    if not isinstance(result, RevocationResult):
        raise RevocationUnknown("the revocation checker gave no result")
    if result.status == RevocationStatus.REVOKED:
        raise CertRevoked(f"the certificate is revoked ({result.method})")
    if result.status == RevocationStatus.GOOD:
        return result
    if policy is RevocationPolicy.ALLOW_OFFLINE:
        logger.warning("revocation status unknown (%s), accepted by allow-offline", result.method)
        return result
    raise RevocationUnknown(f"revocation status unknown ({result.method})")


def _check_signature(key: object, signature: bytes, data: bytes) -> None:
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureInvalid("RS256 needs an RSA certificate key")
    if key.key_size < MIN_RSA_KEY_BITS:
        raise SignatureInvalid(f"the certificate's RSA key is shorter than {MIN_RSA_KEY_BITS} bits")
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureInvalid("the signature does not match this origin and nonce") from None


def _check_id(id_number: str, id_last4: str | None) -> None:
    typed = id_number.strip() if isinstance(id_number, str) else ""
    if len(typed) < 4 or id_last4 is None:
        raise IdMismatch("the ID number does not match the certificate")
    # Constant time: the comparison must not reveal how many characters were right.
    if not hmac.compare_digest(typed[-4:].upper().encode(), id_last4.upper().encode()):
        raise IdMismatch("the ID number does not match the certificate")


# -- the end-entity extension policy for the path check ---------------------------------------


def _require_signing_usage(usage: x509.KeyUsage) -> None:
    if not usage.digital_signature:
        raise WrongKeyUsage("not a signing certificate (the card's encryption certificate?)")
    if usage.key_cert_sign:
        raise WrongKeyUsage("a certificate-signing key cannot authenticate a person")


def _require_not_ca(constraints: x509.BasicConstraints | None) -> None:
    if constraints is not None and constraints.ca:
        raise WrongKeyUsage("a CA certificate cannot authenticate a person")


def _require_client_auth_if_eku(eku: x509.ExtendedKeyUsage | None) -> None:
    if eku is not None and len(eku) > 0 and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise WrongKeyUsage("the certificate's extended key usage excludes client authentication")


def _ee_key_usage(_policy: object, _cert: x509.Certificate, usage: x509.KeyUsage) -> None:
    _require_signing_usage(usage)


def _ee_basic_constraints(
    _policy: object, _cert: x509.Certificate, constraints: x509.BasicConstraints | None
) -> None:
    _require_not_ca(constraints)


def _ee_eku(_policy: object, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    _require_client_auth_if_eku(eku)


_Criticality = verification.Criticality
_EE_POLICY = (
    verification.ExtensionPolicy.permit_all()
    .require_present(x509.KeyUsage, _Criticality.AGNOSTIC, _ee_key_usage)
    .may_be_present(x509.BasicConstraints, _Criticality.AGNOSTIC, _ee_basic_constraints)
    .may_be_present(x509.ExtendedKeyUsage, _Criticality.AGNOSTIC, _ee_eku)
)


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)
