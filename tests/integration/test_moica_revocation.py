# SPDX-License-Identifier: Apache-2.0
"""OCSP, CRLs and their combination against the test revocation server on loopback.

Ports Web eID's ``SubjectCertificateNotRevokedValidatorTest`` and ``OcspResponseValidatorTest``
(bridge-security.md §1.5) to MOICA's setting: a responder for the test MOICA CA, faults injected
one at a time, and the complete-CRL fallback.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from cardd.moica.crl import CrlSource, CrlStore, CrlStoreConfig
from cardd.moica.ocsp import DesignatedResponder, OcspClient, OcspConfig, check_freshness
from cardd.moica.revocation import Revocation
from cardd.moica.types import RevocationChecker, RevocationResult, RevocationStatus
from cardd.sim.revocation_server import CrlFault, OcspFault, RevocationServer
from cardd.sim.testpki import (
    TestPki,
    Validity,
    make_citizen,
    make_ocsp_responder,
    make_test_pki,
)

GOOD, REVOKED, UNKNOWN = RevocationStatus.GOOD, RevocationStatus.REVOKED, RevocationStatus.UNKNOWN


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return make_test_pki()


@pytest.fixture(scope="module")
def running(pki: TestPki) -> Iterator[RevocationServer]:
    with RevocationServer(pki) as server:
        yield server


@pytest.fixture
def server(running: RevocationServer) -> Iterator[RevocationServer]:
    """The module's server, with every knob back at its default for each test."""
    yield running
    running.ocsp_fault = OcspFault.NONE
    running.crl_fault = CrlFault.NONE
    running.responder = None
    running.ocsp_next_update = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def citizen(pki: TestPki, running: RevocationServer) -> x509.Certificate:
    """A citizen whose AIA and CRL DP point at the running server."""
    return make_citizen(
        pki.moica,
        name="王小明",
        serial_number="1234567890123456",
        id_last4="6789",
        endpoints=running.endpoints,
    ).signing.certificate


@pytest.fixture(scope="module")
def revoked_citizen(pki: TestPki, running: RevocationServer) -> x509.Certificate:
    cert = make_citizen(
        pki.moica,
        name="陳美麗",
        serial_number="6543210987654321",
        id_last4="4321",
        endpoints=running.endpoints,
    ).signing.certificate
    running.revoke(cert.serial_number, x509_time(2025, 6, 1), x509.ReasonFlags.key_compromise)
    return cert


def x509_time(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)


@pytest.fixture
def client() -> OcspClient:
    return OcspClient(OcspConfig(timeout=0.5))


def check(checker: RevocationChecker, cert: x509.Certificate, pki: TestPki) -> RevocationResult:
    return checker.check(cert, pki.moica.certificate, now=now())


# -- OCSP: the answers -------------------------------------------------------------------------


def test_ocsp_good(
    server: RevocationServer, client: OcspClient, citizen: x509.Certificate, pki: TestPki
) -> None:
    before = server.requests["/ocsp"]
    result = check(client, citizen, pki)
    assert (result.status, result.method) == (GOOD, "ocsp")
    assert result.produced_at is not None and abs(result.produced_at - now()) < dt.timedelta(
        minutes=1
    )
    assert server.requests["/ocsp"] == before + 1


def test_ocsp_revoked(
    server: RevocationServer, client: OcspClient, revoked_citizen: x509.Certificate, pki: TestPki
) -> None:
    result = check(client, revoked_citizen, pki)
    assert (result.status, result.method) == (REVOKED, "ocsp")
    assert result.revoked_at == x509_time(2025, 6, 1)
    assert "key_compromise" in result.detail


def test_ocsp_unknown_status(
    server: RevocationServer, client: OcspClient, citizen: x509.Certificate, pki: TestPki
) -> None:
    server.ocsp_fault = OcspFault.UNKNOWN
    result = check(client, citizen, pki)
    assert result.status is UNKNOWN and result.detail.startswith("responder_unknown")


def test_ocsp_unknown_for_one_serial(
    pki: TestPki, running: RevocationServer, client: OcspClient
) -> None:
    cert = make_citizen(
        pki.moica,
        name="林",
        serial_number="1111222233334444",
        id_last4="0000",
        endpoints=running.endpoints,
    ).signing.certificate
    running.mark_unknown(cert.serial_number)
    assert check(client, cert, pki).detail.startswith("responder_unknown")


def test_ocsp_without_next_update_is_fine(
    server: RevocationServer, client: OcspClient, citizen: x509.Certificate, pki: TestPki
) -> None:
    server.ocsp_next_update = None
    assert check(client, citizen, pki).status is GOOD


# -- OCSP: every failure is UNKNOWN with a precise detail --------------------------------------


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (OcspFault.STALE, "stale"),
        (OcspFault.FUTURE, "future"),
        (OcspFault.EXPIRED, "expired"),
        (OcspFault.WRONG_KEY, "signature_invalid"),
        (OcspFault.NONCE_OMITTED, "nonce_missing"),
        (OcspFault.NONCE_WRONG, "nonce_mismatch"),
        (OcspFault.WRONG_CERT_ID, "cert_id_mismatch"),
        (OcspFault.TWO_RESPONSES, "response_count"),
        (OcspFault.TWO_CERTS, "unauthorised_responder"),
        (OcspFault.NOT_SUCCESSFUL, "not_successful"),
        (OcspFault.GARBAGE, "malformed"),
        (OcspFault.HTTP_500, "http_error"),
        (OcspFault.SLOW, "timeout"),
        (OcspFault.DOWN, "network_error"),
    ],
)
def test_ocsp_faults(
    server: RevocationServer,
    client: OcspClient,
    citizen: x509.Certificate,
    pki: TestPki,
    fault: OcspFault,
    code: str,
) -> None:
    server.ocsp_fault = fault
    started = time.monotonic()
    result = check(client, citizen, pki)
    assert (result.status, result.method) == (UNKNOWN, "ocsp")
    assert result.detail.startswith(f"{code}:"), result.detail
    assert time.monotonic() - started < 2.0  # the 0.5 s timeout holds even against SLOW


def test_ocsp_nonce_disabled_accepts_an_answer_without_nonce(
    server: RevocationServer, citizen: x509.Certificate, pki: TestPki
) -> None:
    server.ocsp_fault = OcspFault.NONCE_OMITTED
    client = OcspClient(OcspConfig(timeout=0.5, use_nonce=False))
    assert check(client, citizen, pki).status is GOOD


def test_ocsp_max_age_is_configurable(
    server: RevocationServer, citizen: x509.Certificate, pki: TestPki
) -> None:
    server.ocsp_fault = OcspFault.STALE  # thisUpdate an hour old
    client = OcspClient(OcspConfig(timeout=0.5, max_age=dt.timedelta(hours=2)))
    assert check(client, citizen, pki).status is GOOD


def test_ocsp_responder_down(pki: TestPki, citizen: x509.Certificate) -> None:
    server = RevocationServer(pki)
    url = server.start()
    server.stop()  # nobody listens on that port now
    client = OcspClient(
        OcspConfig(
            timeout=0.5, designated=(DesignatedResponder(f"{url}/ocsp", pki.moica.certificate),)
        )
    )
    result = check(client, citizen, pki)
    assert result.status is UNKNOWN and result.detail.startswith("network_error")


def test_ocsp_no_url(pki: TestPki, client: OcspClient) -> None:
    # The MOICA CA certificate has no AIA OCSP entry: nothing to ask
    result = client.check(pki.moica.certificate, pki.root.certificate, now=now())
    assert result.status is UNKNOWN and result.detail.startswith("no_url")


def test_ocsp_invalid_url(pki: TestPki, citizen: x509.Certificate) -> None:
    designated = DesignatedResponder("ftp://127.0.0.1/ocsp", pki.moica.certificate)
    client = OcspClient(OcspConfig(timeout=0.5, designated=(designated,)))
    result = check(client, citizen, pki)
    assert result.status is UNKNOWN and result.detail.startswith("http_error")


# -- OCSP: who may answer ----------------------------------------------------------------------


def test_delegated_responder_with_eku(
    server: RevocationServer,
    client: OcspClient,
    citizen: x509.Certificate,
    revoked_citizen: x509.Certificate,
    pki: TestPki,
) -> None:
    server.responder = make_ocsp_responder(pki.moica)
    assert check(client, citizen, pki).status is GOOD
    assert check(client, revoked_citizen, pki).status is REVOKED


def test_delegated_responder_without_eku(
    server: RevocationServer, client: OcspClient, citizen: x509.Certificate, pki: TestPki
) -> None:
    server.responder = make_ocsp_responder(pki.moica, eku=False)
    result = check(client, citizen, pki)
    assert result.status is UNKNOWN and "OCSPSigning" in result.detail


def test_delegated_responder_from_another_ca(
    server: RevocationServer, client: OcspClient, citizen: x509.Certificate, pki: TestPki
) -> None:
    # "responder CA untrusted": EKU present, but certified by the root, not by the issuer
    server.responder = make_ocsp_responder(pki.root)
    result = check(client, citizen, pki)
    assert result.status is UNKNOWN and "not issued by the issuer" in result.detail


def test_delegated_responder_expired(
    server: RevocationServer, client: OcspClient, citizen: x509.Certificate, pki: TestPki
) -> None:
    past = Validity(x509_time(2020, 1, 1), x509_time(2021, 1, 1))
    server.responder = make_ocsp_responder(pki.moica, validity=past)
    result = check(client, citizen, pki)
    assert result.status is UNKNOWN and "not valid at" in result.detail


def test_designated_responder(
    server: RevocationServer,
    citizen: x509.Certificate,
    revoked_citizen: x509.Certificate,
    pki: TestPki,
) -> None:
    # Web eID's "designated OCSP service": a configured URL and certificate, trusted as such
    responder = make_ocsp_responder(pki.root, eku=False)
    server.responder = responder
    designated = DesignatedResponder(f"{server.url}/ocsp", responder.certificate)
    client = OcspClient(OcspConfig(timeout=0.5, designated=(designated,)))
    assert check(client, citizen, pki).status is GOOD
    assert check(client, revoked_citizen, pki).status is REVOKED
    # the same answer without that configuration: unauthorised
    assert check(OcspClient(OcspConfig(timeout=0.5)), citizen, pki).detail.startswith(
        "unauthorised_responder"
    )
    # the designated configuration does not accept the CA's own signature
    server.responder = None
    assert check(client, citizen, pki).detail.startswith("unauthorised_responder")


def test_designated_responder_for_other_issuers_only(
    server: RevocationServer, client: OcspClient, citizen: x509.Certificate, pki: TestPki
) -> None:
    responder = make_ocsp_responder(pki.root, eku=False)
    designated = DesignatedResponder(
        "http://127.0.0.1:1/ocsp", responder.certificate, frozenset({b"other"})
    )
    client = OcspClient(OcspConfig(timeout=0.5, designated=(designated,)))
    assert check(client, citizen, pki).status is GOOD  # went to the AIA URL


# -- OcspResponseValidatorTest: update times ---------------------------------------------------

SKEW, AGE = dt.timedelta(minutes=15), dt.timedelta(minutes=2)
NOW = x509_time(2026, 3, 16, 12, 0)


@pytest.mark.parametrize(
    ("this_update", "next_update", "code"),
    [
        (NOW - AGE + dt.timedelta(seconds=1), NOW + dt.timedelta(minutes=5), None),  # within
        (NOW + SKEW - dt.timedelta(seconds=1), None, None),  # ahead, within skew
        (NOW, NOW - SKEW + dt.timedelta(seconds=1), "expired"),  # before thisUpdate
        (NOW - dt.timedelta(seconds=30), NOW - dt.timedelta(seconds=60), "expired"),
        (NOW - dt.timedelta(minutes=30), None, "stale"),
        (NOW + dt.timedelta(minutes=30), None, "future"),
        (NOW, NOW - dt.timedelta(minutes=30), "expired"),
    ],
)
def test_update_times(
    this_update: dt.datetime, next_update: dt.datetime | None, code: str | None
) -> None:
    bad = check_freshness(this_update, next_update, NOW, skew=SKEW, max_age=AGE)
    assert (bad and bad[0]) == code


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        OcspConfig(timeout=0)
    with pytest.raises(ValueError):
        OcspConfig(max_age=dt.timedelta(0))


# -- CRLs from the server ----------------------------------------------------------------------


def crl_store(
    server: RevocationServer,
    pki: TestPki,
    tmp_path: Path,
    *,
    grace: dt.timedelta = dt.timedelta(hours=24),
    wake_interval: float = 60.0,
) -> CrlStore:
    config = CrlStoreConfig(timeout=2.0, grace=grace, wake_interval=wake_interval)
    return CrlStore(
        [CrlSource(pki.moica.certificate, server.endpoints.moica_crl)], tmp_path, config
    )


def test_crl_revoked_and_not(
    server: RevocationServer,
    citizen: x509.Certificate,
    revoked_citizen: x509.Certificate,
    pki: TestPki,
    tmp_path: Path,
) -> None:
    store = crl_store(server, pki, tmp_path)
    [outcome] = store.refresh()
    assert outcome.ok, outcome.detail
    good, bad = check(store, citizen, pki), check(store, revoked_citizen, pki)
    assert (good.status, good.method) == (GOOD, "crl")
    assert (bad.status, bad.method) == (REVOKED, "crl")
    assert bad.revoked_at == x509_time(2025, 6, 1)


def test_crl_stale_beyond_grace(
    server: RevocationServer,
    citizen: x509.Certificate,
    revoked_citizen: x509.Certificate,
    pki: TestPki,
    tmp_path: Path,
) -> None:
    server.crl_fault = CrlFault.STALE  # nextUpdate two days ago
    store = crl_store(server, pki, tmp_path, grace=dt.timedelta(hours=1))
    assert store.refresh()[0].ok  # the newest the CA offers: kept
    result = check(store, citizen, pki)
    assert result.status is UNKNOWN and result.detail.startswith("crl_expired")
    assert check(store, revoked_citizen, pki).status is REVOKED  # listed: still revoked


def test_crl_stale_within_grace(
    server: RevocationServer, citizen: x509.Certificate, pki: TestPki, tmp_path: Path
) -> None:
    server.crl_fault = CrlFault.STALE
    store = crl_store(server, pki, tmp_path, grace=dt.timedelta(days=3))
    store.refresh()
    result = check(store, citizen, pki)
    assert (result.status, result.method) == (GOOD, "crl-cached")


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        (CrlFault.BAD_SIGNATURE, "signature"),
        (CrlFault.GARBAGE, "not a CRL"),
        (CrlFault.HTTP_500, "HTTP 500"),
        (CrlFault.DOWN, "Remote"),
    ],
)
def test_crl_refused_or_unreachable(
    server: RevocationServer,
    citizen: x509.Certificate,
    pki: TestPki,
    tmp_path: Path,
    fault: CrlFault,
    words: str,
) -> None:
    server.crl_fault = fault
    store = crl_store(server, pki, tmp_path)
    [outcome] = store.refresh()
    assert not outcome.ok and words in outcome.detail, outcome.detail
    result = check(store, citizen, pki)
    assert result.status is UNKNOWN and result.detail.startswith("no_crl")
    assert not list(tmp_path.rglob("*.idx"))


def test_crl_offline_within_grace(
    server: RevocationServer,
    citizen: x509.Certificate,
    revoked_citizen: x509.Certificate,
    pki: TestPki,
    tmp_path: Path,
) -> None:
    store = crl_store(server, pki, tmp_path, grace=dt.timedelta(hours=24))
    store.refresh()
    server.crl_fault = CrlFault.DOWN
    assert not store.refresh(force=True)[0].ok  # offline now: the held CRL stays
    index = store.index(CrlSource(pki.moica.certificate, "").key_id)
    assert index is not None
    info = index.info
    later = info.next_update + dt.timedelta(hours=1)
    good = store.check(citizen, pki.moica.certificate, now=later)
    bad = store.check(revoked_citizen, pki.moica.certificate, now=later)
    assert (good.status, good.method) == (GOOD, "crl-cached")
    assert (bad.status, bad.method) == (REVOKED, "crl-cached")
    past_grace = info.next_update + dt.timedelta(hours=25)
    assert store.check(citizen, pki.moica.certificate, now=past_grace).status is UNKNOWN


def test_crl_badly_signed_does_not_replace_a_good_one(
    server: RevocationServer, revoked_citizen: x509.Certificate, pki: TestPki, tmp_path: Path
) -> None:
    store = crl_store(server, pki, tmp_path)
    store.refresh()
    server.crl_fault = CrlFault.BAD_SIGNATURE
    assert not store.refresh(force=True)[0].ok
    assert check(store, revoked_citizen, pki).status is REVOKED


def test_crl_background_refresher(
    server: RevocationServer, revoked_citizen: x509.Certificate, pki: TestPki, tmp_path: Path
) -> None:
    store = crl_store(server, pki, tmp_path, wake_interval=0.05)
    store.start()
    try:
        deadline = time.monotonic() + 10
        while check(store, revoked_citizen, pki).status is UNKNOWN and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        store.stop()
    assert check(store, revoked_citizen, pki).status is REVOKED


# -- Revocation: OCSP first, then the CRL ------------------------------------------------------


def test_ocsp_answer_wins(
    server: RevocationServer,
    client: OcspClient,
    revoked_citizen: x509.Certificate,
    citizen: x509.Certificate,
    pki: TestPki,
    tmp_path: Path,
) -> None:
    store = crl_store(server, pki, tmp_path)
    store.refresh()
    revocation = Revocation(client, store)
    assert check(revocation, citizen, pki).method == "ocsp"
    result = check(revocation, revoked_citizen, pki)
    assert (result.status, result.method) == (REVOKED, "ocsp")


@pytest.mark.parametrize("fault", [OcspFault.DOWN, OcspFault.HTTP_500, OcspFault.WRONG_KEY])
def test_ocsp_failure_falls_back_to_a_fresh_crl(
    server: RevocationServer,
    client: OcspClient,
    citizen: x509.Certificate,
    revoked_citizen: x509.Certificate,
    pki: TestPki,
    tmp_path: Path,
    fault: OcspFault,
) -> None:
    store = crl_store(server, pki, tmp_path)
    store.refresh()
    server.ocsp_fault = fault
    revocation = Revocation(client, store)
    good, bad = check(revocation, citizen, pki), check(revocation, revoked_citizen, pki)
    assert (good.status, good.method) == (GOOD, "crl")
    assert (bad.status, bad.method) == (REVOKED, "crl")
    assert "ocsp:" in good.detail  # why OCSP was not used, for the logs


@pytest.mark.parametrize("fault", [OcspFault.DOWN, OcspFault.HTTP_500])
def test_ocsp_failure_without_crl_is_unknown(
    server: RevocationServer,
    client: OcspClient,
    citizen: x509.Certificate,
    pki: TestPki,
    tmp_path: Path,
    fault: OcspFault,
) -> None:
    server.ocsp_fault = fault
    server.crl_fault = CrlFault.DOWN
    store = crl_store(server, pki, tmp_path)
    store.refresh()
    for revocation in (Revocation(client, store), Revocation(client, None)):
        result = check(revocation, citizen, pki)
        assert (result.status, result.method) == (UNKNOWN, "none")
        assert "ocsp:" in result.detail


def test_ocsp_failure_with_cached_crl(
    server: RevocationServer,
    client: OcspClient,
    citizen: x509.Certificate,
    pki: TestPki,
    tmp_path: Path,
) -> None:
    store = crl_store(server, pki, tmp_path, grace=dt.timedelta(days=3))
    server.crl_fault = CrlFault.STALE
    store.refresh()
    server.ocsp_fault = OcspFault.DOWN
    result = check(Revocation(client, store), citizen, pki)
    assert (result.status, result.method) == (GOOD, "crl-cached")


def test_nothing_configured(citizen: x509.Certificate, pki: TestPki) -> None:
    result = check(Revocation(None, None), citizen, pki)
    assert (result.status, result.method) == (UNKNOWN, "none")


def test_crl_only(
    server: RevocationServer, revoked_citizen: x509.Certificate, pki: TestPki, tmp_path: Path
) -> None:
    store = crl_store(server, pki, tmp_path)
    store.refresh()
    assert check(Revocation(None, store), revoked_citizen, pki).method == "crl"


def test_crl_size_limit(server: RevocationServer, pki: TestPki, tmp_path: Path) -> None:
    config = CrlStoreConfig(max_bytes=200)
    store = CrlStore(
        [CrlSource(pki.moica.certificate, server.endpoints.moica_crl)], tmp_path, config
    )
    [outcome] = store.refresh()
    assert not outcome.ok and "larger than 200 bytes" in outcome.detail


def test_server_serves_the_pki_endpoints(server: RevocationServer, pki: TestPki) -> None:
    from cardd.moica.ocsp import http_request

    ca = http_request(server.endpoints.moica_ca_issuers, timeout=2, max_bytes=1 << 20)
    assert x509.load_der_x509_certificate(ca) == pki.moica.certificate
    root_crl = http_request(server.endpoints.root_crl, timeout=2, max_bytes=1 << 20)
    assert x509.load_der_x509_crl(root_crl).is_signature_valid(pki.root.certificate.public_key())  # type: ignore[arg-type]
