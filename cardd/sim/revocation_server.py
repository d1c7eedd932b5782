# SPDX-License-Identifier: Apache-2.0
"""A test OCSP responder and CRL server for the test PKI, on loopback, with faults to inject.

Serves the paths of :class:`~cardd.sim.testpki.PkiEndpoints`::

    POST /ocsp                    OCSP (RFC 6960), answering for the test MOICA CA
    GET  /crl/test-moica.crl      complete CRL of the test MOICA CA (signed per request)
    GET  /crl/test-grca.crl       CRL of the test root (empty)
    GET  /certs/test-moica.cer    the test MOICA CA certificate (AIA caIssuers)

Usage (tests, ``cardd sim``)::

    server = RevocationServer(pki)           # port 0: the kernel picks a free port
    url = server.start()                     # "http://127.0.0.1:PORT"
    citizen = make_citizen(pki.moica, ..., endpoints=server.endpoints)  # AIA/CRLDP → this server
    server.revoke(citizen.signing.certificate.serial_number)
    server.ocsp_fault = OcspFault.NONCE_WRONG
    server.stop()

The certificates of a PKI made with default endpoints point at ``http://127.0.0.1:7431``; start
the server with ``port=7431`` to serve those, or issue citizens with ``server.endpoints``.

Test material only: nothing here checks who asks, and the faults exist to be wrong.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
from collections import Counter
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp

from cardd.moica.ocsp import children, public_key_bits, read_tlv
from cardd.sim.testpki import (
    IssuedCertificate,
    PkiEndpoints,
    RevokedEntry,
    TestPki,
    make_crl,
    new_rsa_key,
)

logger = logging.getLogger(__name__)


class OcspFault(StrEnum):
    NONE = "none"
    UNKNOWN = "unknown"  # certStatus unknown for everything
    STALE = "stale"  # thisUpdate an hour ago
    FUTURE = "future"  # thisUpdate an hour ahead
    EXPIRED = "expired"  # nextUpdate an hour ago
    WRONG_KEY = "wrong-key"  # signed by a key that is not the responder's
    NONCE_OMITTED = "nonce-omitted"
    NONCE_WRONG = "nonce-wrong"
    WRONG_CERT_ID = "wrong-cert-id"  # answers for serial + 1
    TWO_RESPONSES = "two-responses"  # the SingleResponse twice
    TWO_CERTS = "two-certs"  # responder certificate plus the CA certificate
    NOT_SUCCESSFUL = "not-successful"  # responseStatus tryLater
    GARBAGE = "garbage"  # 200 with a body that is not DER
    HTTP_500 = "http-500"
    SLOW = "slow"  # answers after `slow_seconds`
    DOWN = "down"  # closes the connection without a word


class CrlFault(StrEnum):
    NONE = "none"
    STALE = "stale"  # thisUpdate 3 days ago, nextUpdate 2 days ago
    BAD_SIGNATURE = "bad-signature"  # signed by another key
    GARBAGE = "garbage"
    HTTP_500 = "http-500"
    SLOW = "slow"
    DOWN = "down"


class RevocationServer:
    """OCSP + CRLs for ``pki`` on ``host:port`` in a background thread.

    The knobs are plain attributes, read per request: ``ocsp_fault``, ``crl_fault``,
    ``responder`` (a delegated responder's certificate and key; None = the CA signs),
    ``slow_seconds``, ``ocsp_next_update`` (None = omit nextUpdate) and ``crl_validity``.
    ``requests`` counts requests per path.
    """

    def __init__(self, pki: TestPki, host: str = "127.0.0.1", port: int = 0) -> None:
        self.pki = pki
        self.host, self.port = host, port
        self.ocsp_fault = OcspFault.NONE
        self.crl_fault = CrlFault.NONE
        self.responder: IssuedCertificate | None = None
        self.slow_seconds = 3.0
        self.ocsp_next_update: dt.timedelta | None = dt.timedelta(hours=1)
        self.crl_validity = dt.timedelta(days=1)
        self.crl_number = 1
        self.requests: Counter[str] = Counter()
        self._revoked: dict[int, RevokedEntry] = {}
        self._unknown: set[int] = set()
        self._other_key: rsa.RSAPrivateKey | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------

    def start(self) -> str:
        """Bind and serve; returns the base URL (``http://host:port``)."""
        if self._httpd is not None:
            return self.url
        self._stopping.clear()
        self._httpd = _Server((self.host, self.port), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits for one poll
            name="revocation-server",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket (connections are then refused)."""
        self._stopping.set()  # cut SLOW answers short
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> RevocationServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoints(self) -> PkiEndpoints:
        return PkiEndpoints.at(self.url)

    def revoke(
        self,
        serial: int,
        when: dt.datetime | None = None,
        reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
    ) -> None:
        """Revoke ``serial`` in OCSP answers and in the MOICA CRL from now on."""
        when = when or dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
        with self._lock:
            self._revoked[serial] = RevokedEntry(serial, when, reason)
            self.crl_number += 1

    def mark_unknown(self, serial: int) -> None:
        """Answer "unknown" for this serial only."""
        with self._lock:
            self._unknown.add(serial)

    @property
    def other_key(self) -> rsa.RSAPrivateKey:
        """The wrong key used by the WRONG_KEY and BAD_SIGNATURE faults."""
        with self._lock:
            if self._other_key is None:
                self._other_key = new_rsa_key()
            return self._other_key

    # -- answers ------------------------------------------------------------------------

    def crl_der(self, ca: IssuedCertificate | None = None) -> bytes:
        """The CRL the server would serve now for ``ca`` (default: the MOICA CA)."""
        ca = ca or self.pki.moica
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        this_update, next_update = now - dt.timedelta(minutes=1), now + self.crl_validity
        if self.crl_fault is CrlFault.STALE:
            this_update, next_update = now - dt.timedelta(days=3), now - dt.timedelta(days=2)
        with self._lock:
            revoked = list(self._revoked.values()) if ca is self.pki.moica else []
            number = self.crl_number
        crl = make_crl(
            ca,
            revoked,
            this_update=this_update,
            next_update=next_update,
            crl_number=number,
            signing_key=self.other_key if self.crl_fault is CrlFault.BAD_SIGNATURE else None,
        )
        return crl.public_bytes(serialization.Encoding.DER)

    def ocsp_response(self, request_der: bytes) -> bytes:
        """The OCSP answer (DER) to ``request_der``, faults applied."""
        fault = self.ocsp_fault
        try:
            req = ocsp.load_der_ocsp_request(request_der)
        except ValueError:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if fault is OcspFault.NOT_SUCCESSFUL:
            return _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
        ca = self.pki.moica
        if req.issuer_key_hash != _key_hash(ca.certificate, req.hash_algorithm):
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        this_update = now + {
            OcspFault.STALE: dt.timedelta(hours=-1),
            OcspFault.FUTURE: dt.timedelta(hours=1),
        }.get(fault, dt.timedelta(0))
        next_update = None if self.ocsp_next_update is None else this_update + self.ocsp_next_update
        if fault is OcspFault.EXPIRED:
            next_update = now - dt.timedelta(hours=1)
        serial = req.serial_number
        with self._lock:
            entry = self._revoked.get(serial)
            unknown = serial in self._unknown
        status = ocsp.OCSPCertStatus.GOOD
        if fault is OcspFault.UNKNOWN or unknown:
            status = ocsp.OCSPCertStatus.UNKNOWN
        elif entry is not None:
            status = ocsp.OCSPCertStatus.REVOKED
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            req.issuer_name_hash,
            req.issuer_key_hash,
            serial + 1 if fault is OcspFault.WRONG_CERT_ID else serial,
            req.hash_algorithm,
            status,
            this_update,
            next_update,
            entry.revoked_at if entry and status is ocsp.OCSPCertStatus.REVOKED else None,
            entry.reason if entry and status is ocsp.OCSPCertStatus.REVOKED else None,
        )
        signer = self.responder or ca
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer.certificate)
        certs = [signer.certificate] if self.responder else []
        if fault is OcspFault.TWO_CERTS:
            certs = [signer.certificate, ca.certificate]
        if certs:
            builder = builder.certificates(certs)
        nonce = _request_nonce(req)
        if fault is OcspFault.NONCE_WRONG:
            nonce = secrets.token_bytes(32)
        if nonce is not None and fault is not OcspFault.NONCE_OMITTED:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        der = builder.sign(signer.private_key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER
        )
        if fault is OcspFault.WRONG_KEY:
            return _resign(der, self.other_key)
        if fault is OcspFault.TWO_RESPONSES:
            return _resign(der, signer.private_key, duplicate=True)
        return der


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: RevocationServer

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out on purpose (SLOW) leave broken pipes: not worth a traceback.
        logger.debug("revocation server: error answering %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    server_version = "cardd-test-revocation/1"

    @property
    def owner(self) -> RevocationServer:
        return self.server.owner

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        logger.debug("revocation server: " + format, *args)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        owner = self.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        owner.requests[self.path] += 1
        if self.path.rstrip("/") != "/ocsp":
            return self._send(404, b"", "text/plain")
        if self._fault(owner.ocsp_fault.value):
            return
        if owner.ocsp_fault is OcspFault.GARBAGE:
            return self._send(200, b"\x30\x03not an OCSP response", "application/ocsp-response")
        self._send(200, owner.ocsp_response(body), "application/ocsp-response")

    def do_GET(self) -> None:  # noqa: N802
        owner = self.owner
        owner.requests[self.path] += 1
        paths = {
            "/crl/test-moica.crl": lambda: owner.crl_der(),
            "/crl/test-grca.crl": lambda: owner.crl_der(owner.pki.root),
            "/certs/test-moica.cer": lambda: owner.pki.moica.der(),
        }
        make = paths.get(self.path)
        if make is None:
            return self._send(404, b"", "text/plain")
        if self.path.startswith("/crl/") and self._fault(owner.crl_fault.value):
            return
        if self.path.startswith("/crl/") and owner.crl_fault is CrlFault.GARBAGE:
            return self._send(200, b"not a CRL", "application/pkix-crl")
        kind = "application/pkix-crl" if self.path.endswith(".crl") else "application/pkix-cert"
        self._send(200, make(), kind)

    def _fault(self, fault: str) -> bool:
        """Apply a transport fault (HTTP 500, slow, down); True if the request is done."""
        if fault == "http-500":
            self._send(500, b"internal error (injected)", "text/plain")
            return True
        if fault == "down":
            self.close_connection = True
            self.connection.close()  # the client sees the connection closed, no status line
            return True
        if fault == "slow":
            self.owner._stopping.wait(self.owner.slow_seconds)
        return False

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout tests): nothing to tell it
            self.close_connection = True


# -- DER surgery for faults the builder refuses to make -------------------------------------


def _resign(der: bytes, key: rsa.RSAPrivateKey, *, duplicate: bool = False) -> bytes:
    """``der`` re-signed with ``key``; with ``duplicate``, its SingleResponse twice."""
    # OCSPResponse { status, [0] { ResponseBytes { oid, OCTET STRING { BasicOCSPResponse } } } }
    _, s, e = read_tlv(der, 0, len(der))
    status, explicit = children(der, s, e)
    _, rs, re_ = read_tlv(der, explicit[2], explicit[3])
    oid, octets = children(der, rs, re_)
    basic = der[octets[2] : octets[3]]
    _, bs, be = read_tlv(basic, 0, len(basic))
    tbs, alg, _sig, *rest = children(basic, bs, be)
    tbs_der = basic[tbs[1] : tbs[3]]
    if duplicate:  # ResponseData: [0] version?, responderID, producedAt, responses, [1] exts?
        out, done = [], False
        for tag, hs, vs, ve in children(basic, tbs[2], tbs[3]):
            raw = basic[hs:ve]
            if tag == 0x30 and not done:  # responses: SEQUENCE OF SingleResponse (one here)
                raw, done = _tlv(0x30, basic[vs:ve] * 2), True
            out.append(raw)
        tbs_der = _tlv(0x30, b"".join(out))
    sig = key.sign(tbs_der, padding.PKCS1v15(), hashes.SHA256())
    new_basic = _tlv(
        0x30,
        tbs_der
        + basic[alg[1] : alg[3]]
        + _tlv(0x03, b"\x00" + sig)
        + b"".join(basic[r[1] : r[3]] for r in rest),
    )
    response_bytes = _tlv(0x30, der[oid[1] : oid[3]] + _tlv(0x04, new_basic))
    return _tlv(0x30, der[status[1] : status[3]] + _tlv(0xA0, response_bytes))


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + value


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


def _request_nonce(req: ocsp.OCSPRequest) -> bytes | None:
    try:
        return req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except (x509.ExtensionNotFound, ValueError):
        return None


def _key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(public_key_bits(cert))
    return h.finalize()
