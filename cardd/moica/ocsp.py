# SPDX-License-Identifier: Apache-2.0
"""OCSP for citizen certificates: one request, a strictly checked answer (bridge-security.md §1.4).

:meth:`OcspClient.check` never raises. Every failure is an UNKNOWN :class:`RevocationResult` whose
``detail`` starts with a stable code, then a colon and words for a person:

=========================  =============================================================
``no_url``                 neither a designated responder nor an http(s) OCSP URL in the AIA
``timeout``                no complete answer within ``timeout`` seconds
``http_error``             an HTTP status other than 200
``network_error``          connection refused or reset, DNS, TLS
``malformed``              the body is not an OCSP response (or its nonce extension is not)
``not_successful``         responseStatus other than successful (tryLater, unauthorized, ...)
``unauthorised_responder`` signer is neither the issuer, a delegated responder it certified
                           with the OCSPSigning EKU, nor the configured designated responder
``signature_invalid``      the response signature does not verify (or uses a refused algorithm)
``response_count``         not exactly one SingleResponse
``cert_id_mismatch``       the SingleResponse is about another certificate or issuer
``nonce_missing``          we sent a nonce and the answer has none (replay protection)
``nonce_mismatch``         the answer's nonce is not ours
``future`` / ``stale``     thisUpdate after now + skew / before now - max_age
``expired``                nextUpdate before now - skew (or before thisUpdate)
``responder_unknown``      a valid answer whose status is "unknown"
``internal_error``         a bug; logged with its traceback
=========================  =============================================================

Decisions:

* The CertID is SHA-1 by default: RFC 5019 responders must accept it and MOICA's legacy responder
  is old; it identifies, it does not protect (the response signature does). A response CertID in
  SHA-256/384/512 is recomputed and accepted too.
* Freshness follows Web eID: ``thisUpdate <= now + skew`` and ``thisUpdate >= now - max_age``;
  ``nextUpdate`` (if present) ``>= now - skew``. Web eID's max age is 2 minutes, which fits a
  responder that signs on request. MOICA's responder is not characterised [uncertain], so the
  default is 15 minutes; a responder serving pre-signed answers needs more (configure it), one
  that signs on request can take 2.
* A nonce is sent and required (RFC 8954, 32 bytes). If MOICA's responder turns out not to echo
  nonces, ``use_nonce=False`` is the switch, and freshness then rests on ``max_age`` alone.
* Response signatures: RSA PKCS#1 v1.5 and ECDSA with SHA-256/384/512 (SHA-1 only with
  ``allow_sha1``). RSASSA-PSS is refused: ``cryptography`` does not expose an OCSP response's PSS
  parameters, and no MOICA responder is known to use PSS.
* At most one certificate in the response (Web eID's "2 responder certs" case fails).

The module also holds what the CRL store shares with it: a minimal DER reader, the certificate
identity helpers (raw subject, key identifier, public key bits) and a bounded HTTP client.
"""

from __future__ import annotations

import datetime as dt
import hmac
import http.client
import io
import logging
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from cardd.moica.types import RevocationResult, RevocationStatus

logger = logging.getLogger(__name__)

_CERT_ID_HASHES = (hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512)
_SIGNATURE_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_OID_RSA_PSS = x509.ObjectIdentifier("1.2.840.113549.1.1.10")


@dataclass(frozen=True)
class DesignatedResponder:
    """A responder configured by hand (Web eID's "designated OCSP service").

    Its certificate is trusted as configured: no EKU or issuer check. Requests for the listed
    issuers (by key identifier; empty = every issuer) go to ``url`` instead of the AIA URL.
    """

    url: str
    certificate: x509.Certificate
    issuer_key_ids: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class OcspConfig:
    #: seconds for the whole exchange (Web eID: 5 s)
    timeout: float = 5.0
    #: tolerated clock difference (Web eID: 15 min)
    skew: dt.timedelta = dt.timedelta(minutes=15)
    #: oldest acceptable thisUpdate (Web eID: 2 min; see the module docstring)
    max_age: dt.timedelta = dt.timedelta(minutes=15)
    use_nonce: bool = True
    designated: tuple[DesignatedResponder, ...] = ()
    cert_id_hash: hashes.HashAlgorithm = field(default_factory=hashes.SHA1)
    allow_sha1: bool = False
    max_response_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.skew < dt.timedelta(0) or self.max_age <= dt.timedelta(0):
            raise ValueError("OCSP timeout and max_age must be positive, skew not negative")


class DerError(ValueError):
    """Bytes that are not the DER expected."""


# -- helpers shared with the CRL store: DER reading, certificate identity, HTTP ---------------


def read_tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """``(tag, value_start, value_end)`` of the DER TLV at ``pos``; definite lengths only."""
    if pos + 2 > end:
        raise DerError(f"DER truncated at offset {pos}")
    tag, n = buf[pos], buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + k > end:
            raise DerError(f"bad DER length at offset {pos - 2}")
        n = int.from_bytes(buf[pos : pos + k], "big")
        pos += k
    if tag & 0x1F == 0x1F or pos + n > end:
        raise DerError(f"bad DER (high tag or overrun) at offset {pos}")
    return tag, pos, pos + n


def children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The TLVs inside ``[start, end)`` as ``(tag, tlv_start, value_start, value_end)``."""
    out = []
    while start < end:
        tag, vs, ve = read_tlv(buf, start, end)
        out.append((tag, start, vs, ve))
        start = ve
    return out


def subject_der(cert: x509.Certificate) -> bytes:
    """The subject Name exactly as encoded in the certificate (no re-encoding)."""
    tbs = cert.tbs_certificate_bytes
    _, s, e = read_tlv(tbs, 0, len(tbs))
    fields = children(tbs, s, e)
    offset = 1 if fields[0][0] == 0xA0 else 0  # [0] version
    _, hs, _, ve = fields[offset + 4]  # serial, signature, issuer, validity, subject
    return tbs[hs:ve]


def key_id(cert: x509.Certificate) -> bytes:
    """The certificate's SKI, or the RFC 5280 method-1 hash when it has none."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


class HttpError(OSError):
    """A non-200 HTTP answer, or a refused URL."""


def http_request(
    url: str,
    *,
    data: bytes | None = None,
    content_type: str = "",
    accept: str = "*/*",
    timeout: float,
    max_bytes: int,
) -> bytes:
    """GET (or POST ``data``) an http(s) URL; the whole exchange within ``timeout`` seconds.

    urllib's timeout is per socket operation, so a server dripping bytes is cut off here too.
    Raises :class:`TimeoutError`, :class:`HttpError` or another ``OSError``.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise HttpError(f"refusing a non-HTTP URL: {url}")
    deadline = time.monotonic() + timeout
    headers = {"Accept": accept, **({"Content-Type": content_type} if content_type else {})}
    req = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - scheme checked
    body = io.BytesIO()  # getvalue() hands its buffer over: a 20 MB CRL is not held twice
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            if resp.status != 200:
                raise HttpError(f"HTTP {resp.status}")
            while chunk := resp.read(min(1 << 16, max_bytes + 1 - body.tell())):
                body.write(chunk)
                if body.tell() > max_bytes:
                    raise HttpError(f"answer larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no complete answer within {timeout} s")
    except urllib.error.HTTPError as e:
        raise HttpError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise TimeoutError(f"no answer within {timeout} s") from None
        raise OSError(str(e.reason)) from None
    except http.client.HTTPException as e:  # RemoteDisconnected, IncompleteRead, BadStatusLine
        raise OSError(f"{type(e).__name__}: {e}") from None
    return body.getvalue()


def public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents (what CertID and byKey responder IDs hash)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _, s, e = read_tlv(spki, 0, len(spki))
    _, _, ae = read_tlv(spki, s, e)  # algorithm
    _, bs, be = read_tlv(spki, ae, e)
    return spki[bs + 1 : be]  # skip the unused-bits octet


# -- the client -------------------------------------------------------------------------------


class _Fail(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code


def check_freshness(
    this_update: dt.datetime,
    next_update: dt.datetime | None,
    now: dt.datetime,
    *,
    skew: dt.timedelta,
    max_age: dt.timedelta,
) -> tuple[str, str] | None:
    """``(code, text)`` if the update times are unacceptable at ``now``, else None (Web eID)."""
    if this_update > now + skew:
        return "future", f"thisUpdate {this_update} is after now + skew ({now + skew})"
    if this_update < now - max_age:
        return "stale", f"thisUpdate {this_update} is older than {max_age} (now {now})"
    if next_update is not None and next_update < now - skew:
        return "expired", f"nextUpdate {next_update} is before now - skew ({now - skew})"
    if next_update is not None and next_update < this_update:
        return "expired", f"nextUpdate {next_update} is before thisUpdate {this_update}"
    return None


def ocsp_url(cert: x509.Certificate) -> str | None:
    """The first http(s) OCSP URL in the certificate's AIA."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        loc = desc.access_location
        if (
            desc.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(loc, x509.UniformResourceIdentifier)
            and loc.value.lower().startswith(("http://", "https://"))
        ):
            return loc.value
    return None


class OcspClient:
    """Asks the certificate's OCSP responder (or a designated one) and validates the answer."""

    def __init__(self, config: OcspConfig | None = None) -> None:
        self.config = config or OcspConfig()

    def check(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, now: dt.datetime
    ) -> RevocationResult:
        try:
            return self._check(cert, issuer, now)
        except _Fail as f:
            logger.info("OCSP check failed: %s", f)
            return RevocationResult(RevocationStatus.UNKNOWN, "ocsp", str(f))
        except ValueError as e:  # cryptography parses parts of the response lazily
            logger.info("OCSP response malformed: %s", e)
            return RevocationResult(RevocationStatus.UNKNOWN, "ocsp", f"malformed: {e}")
        except Exception as e:  # the contract: no exception reaches the caller
            logger.exception("OCSP check failed unexpectedly")
            return RevocationResult(
                RevocationStatus.UNKNOWN, "ocsp", f"internal_error: {type(e).__name__}: {e}"
            )

    def _designated(self, issuer: x509.Certificate) -> DesignatedResponder | None:
        kid = key_id(issuer)
        for d in self.config.designated:
            if not d.issuer_key_ids or kid in d.issuer_key_ids:
                return d
        return None

    def _check(
        self, cert: x509.Certificate, issuer: x509.Certificate, now: dt.datetime
    ) -> RevocationResult:
        cfg = self.config
        designated = self._designated(issuer)
        url = designated.url if designated else ocsp_url(cert)
        if not url:
            raise _Fail("no_url", "the certificate names no http(s) OCSP responder")
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, cfg.cert_id_hash)
        nonce = secrets.token_bytes(32) if cfg.use_nonce else None
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        body = self._post(url, builder.build().public_bytes(serialization.Encoding.DER))
        try:
            resp = ocsp.load_der_ocsp_response(body)
        except ValueError as e:
            raise _Fail("malformed", f"not an OCSP response: {e}") from None
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise _Fail("not_successful", f"responseStatus {resp.response_status.name}")

        signer = self._signer(resp, issuer, designated, now)
        self._verify_signature(resp, signer)
        singles = list(resp.responses)
        if len(singles) != 1:
            raise _Fail("response_count", f"{len(singles)} SingleResponses, expected 1")
        single = singles[0]
        _match_cert_id(single, cert, issuer)
        if nonce is not None:
            try:
                ext = resp.extensions.get_extension_for_class(x509.OCSPNonce)
            except x509.ExtensionNotFound:
                raise _Fail("nonce_missing", "the response does not echo our nonce") from None
            except ValueError as e:
                raise _Fail("malformed", f"response extensions: {e}") from None
            if not hmac.compare_digest(ext.value.nonce, nonce):
                raise _Fail("nonce_mismatch", "the response's nonce is not the one we sent")
        bad = check_freshness(
            single.this_update_utc, single.next_update_utc, now, skew=cfg.skew, max_age=cfg.max_age
        )
        if bad:
            raise _Fail(*bad)

        produced = resp.produced_at_utc
        status = single.certificate_status
        if status == ocsp.OCSPCertStatus.GOOD:
            return RevocationResult(RevocationStatus.GOOD, "ocsp", f"good ({url})", produced)
        if status == ocsp.OCSPCertStatus.REVOKED:
            reason = single.revocation_reason
            return RevocationResult(
                RevocationStatus.REVOKED,
                "ocsp",
                f"revoked ({reason.name if reason else 'no reason given'})",
                produced,
                single.revocation_time_utc,
            )
        raise _Fail("responder_unknown", "the responder does not know this certificate")

    def _post(self, url: str, request: bytes) -> bytes:
        try:
            return http_request(
                url,
                data=request,
                content_type="application/ocsp-request",
                accept="application/ocsp-response",
                timeout=self.config.timeout,
                max_bytes=self.config.max_response_bytes,
            )
        except TimeoutError as e:
            raise _Fail("timeout", f"{url}: {e}") from None
        except HttpError as e:
            raise _Fail("http_error", f"{url}: {e}") from None
        except OSError as e:
            raise _Fail("network_error", f"{url}: {e}") from None

    def _signer(
        self,
        resp: ocsp.OCSPResponse,
        issuer: x509.Certificate,
        designated: DesignatedResponder | None,
        now: dt.datetime,
    ) -> x509.Certificate:
        """The certificate whose key must have signed ``resp`` (RFC 6960 §4.2.2.2)."""
        if designated is not None:
            candidate = designated.certificate
            if not _names_signer(resp, candidate):
                raise _Fail("unauthorised_responder", "not signed by the designated responder")
            _check_validity(candidate, now)
            return candidate
        certs = resp.certificates
        if len(certs) > 1:
            raise _Fail("unauthorised_responder", f"{len(certs)} certificates, expected at most 1")
        if not certs or certs[0] == issuer:
            if not _names_signer(resp, issuer):
                raise _Fail("unauthorised_responder", "responder ID names neither issuer nor cert")
            return issuer
        responder = certs[0]
        if not _names_signer(resp, responder):
            raise _Fail("unauthorised_responder", "responder ID does not name the included cert")
        try:
            # Issuer name and signature: a responder certified by the same-DN G2 CA fails here.
            responder.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise _Fail(
                "unauthorised_responder", "the responder certificate is not issued by the issuer"
            ) from None
        try:
            eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise _Fail("unauthorised_responder", "the responder certificate lacks OCSPSigning")
        _check_validity(responder, now)
        return responder

    def _verify_signature(self, resp: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
        algorithm = resp.signature_hash_algorithm
        allowed = _SIGNATURE_HASHES + ((hashes.SHA1,) if self.config.allow_sha1 else ())
        if resp.signature_algorithm_oid == _OID_RSA_PSS or not isinstance(algorithm, allowed):
            raise _Fail("signature_invalid", f"refused algorithm {resp.signature_algorithm_oid}")
        key = signer.public_key()
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), algorithm)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algorithm))
            else:
                raise _Fail("signature_invalid", f"unsupported key {type(key).__name__}")
        except (InvalidSignature, ValueError):
            raise _Fail("signature_invalid", "the response signature does not verify") from None


def _names_signer(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the responder ID (byName or byKey) designates ``cert``."""
    if resp.responder_key_hash is not None:
        return hmac.compare_digest(
            # RFC 6960 defines byKey as the SHA-1 hash of the key: not a security choice
            resp.responder_key_hash,
            _digest(hashes.SHA1(), public_key_bits(cert)),  # noqa: S303
        )
    return resp.responder_name == cert.subject


def _check_validity(cert: x509.Certificate, now: dt.datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _Fail(
            "unauthorised_responder",
            f"responder certificate not valid at {now} "
            f"({cert.not_valid_before_utc} .. {cert.not_valid_after_utc})",
        )


def _match_cert_id(
    single: ocsp.OCSPSingleResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> None:
    algorithm = single.hash_algorithm
    if not isinstance(algorithm, _CERT_ID_HASHES):
        raise _Fail("cert_id_mismatch", f"CertID hash {algorithm.name} not supported")
    if (
        single.serial_number != cert.serial_number
        or not hmac.compare_digest(single.issuer_name_hash, _digest(algorithm, subject_der(issuer)))
        or not hmac.compare_digest(
            single.issuer_key_hash, _digest(algorithm, public_key_bits(issuer))
        )
    ):
        raise _Fail("cert_id_mismatch", "the response is about another certificate or issuer")


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()
