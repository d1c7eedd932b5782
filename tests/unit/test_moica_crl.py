# SPDX-License-Identifier: Apache-2.0
"""The CRL store: DER walker against cryptography's view, the index, persistence, freshness.

No network: CRLs come from the test PKI and reach the store through a fake fetcher.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from cardd.moica import crl as crlmod
from cardd.moica.crl import (
    CrlError,
    CrlIndex,
    CrlSource,
    CrlStore,
    CrlStoreConfig,
    ingest,
)
from cardd.moica.types import RevocationStatus
from cardd.sim.testpki import (
    IssuedCertificate,
    RevokedEntry,
    TestPki,
    make_citizen,
    make_crl,
    make_crl_der_fast,
    make_moica_ca,
    make_test_pki,
)

T0 = dt.datetime(2026, 3, 16, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return make_test_pki()


@pytest.fixture(scope="module")
def citizen(pki: TestPki) -> x509.Certificate:
    return make_citizen(
        pki.moica, name="王小明", serial_number="1234567890123456", id_last4="6789"
    ).signing.certificate


def der_of(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def cryptography_view(der: bytes) -> dict[int, dt.datetime]:
    return {r.serial_number: r.revocation_date_utc for r in x509.load_der_x509_crl(der)}


def random_serial(rng: random.Random) -> int:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randrange(1, 256)  # one byte
    if kind == 1:
        return rng.getrandbits(63) | (1 << 63)  # high bit set: DER adds a leading zero
    if kind == 2:
        return rng.getrandbits(158) | (1 << 158)  # 20 encoded bytes, the RFC 5280 maximum
    if kind == 3:
        return rng.getrandbits(151) | (1 << 151)  # 19 bytes, high bit set: 20 with the zero
    return rng.getrandbits(rng.randrange(8, 128)) | 1


def random_entry(rng: random.Random) -> RevokedEntry:
    when = dt.datetime(1990, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=rng.randrange(60 * 365 * 86400)  # into 2049; GeneralizedTime after that
    )
    reason = rng.choice([None, x509.ReasonFlags.key_compromise, x509.ReasonFlags.superseded])
    return RevokedEntry(random_serial(rng), when, reason)


# -- the walker and the index against cryptography ------------------------------------------


def test_small_crl_matches_cryptography(pki: TestPki) -> None:
    entries = [
        RevokedEntry(1, T0 - dt.timedelta(days=3), x509.ReasonFlags.key_compromise),
        RevokedEntry(0x80, T0 - dt.timedelta(days=2)),  # leading zero
        RevokedEntry(0xFF00, T0 - dt.timedelta(days=1), x509.ReasonFlags.certificate_hold),
    ]
    der = der_of(make_crl(pki.moica, entries, this_update=T0, crl_number=7))
    idx = ingest(der, pki.moica.certificate, url="test")
    assert dict(idx.items()) == cryptography_view(der)
    assert len(idx) == 3 and idx.info.crl_number == 7 and idx.info.url == "test"
    assert idx.info.this_update == T0 and idx.info.next_update == T0 + dt.timedelta(days=1)
    assert idx.lookup(0x80) == (True, T0 - dt.timedelta(days=2))
    assert idx.lookup(0x81) == (False, None)
    assert 1 in idx and 0 not in idx and -1 not in idx and 2**200 not in idx


def test_empty_crl(pki: TestPki) -> None:
    idx = ingest(der_of(make_crl(pki.moica, [], this_update=T0)), pki.moica.certificate)
    assert len(idx) == 0 and 1 not in idx and list(idx.items()) == []


@pytest.mark.parametrize("seed", range(8))
def test_random_crls_match_cryptography(pki: TestPki, seed: int) -> None:
    rng = random.Random(seed)
    entries = {e.serial: e for e in (random_entry(rng) for _ in range(rng.randrange(1, 300)))}
    der = der_of(make_crl(pki.moica, entries.values(), this_update=T0))
    idx = ingest(der, pki.moica.certificate)
    expected = cryptography_view(der)
    assert dict(idx.items()) == expected
    for serial, when in expected.items():
        assert idx.lookup(serial) == (True, when)
    for _ in range(300):
        probe = random_serial(rng)
        assert (probe in idx) == (probe in expected)


def test_generalized_time_entries(pki: TestPki) -> None:
    # cryptography writes GeneralizedTime from 2050 on: those entries take the odd path
    late = dt.datetime(2051, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    der = der_of(make_crl(pki.moica, [RevokedEntry(5, late), RevokedEntry(6, T0)]))
    idx = ingest(der, pki.moica.certificate)
    assert idx.lookup(5) == (True, late) and idx.lookup(6) == (True, T0)
    assert dict(idx.items()) == cryptography_view(der)


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    head = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)])
        + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + head + value


SHA256_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")
SHA1_RSA = bytes.fromhex("300d06092a864886f70d0101050500")


def hand_made_crl(
    ca: IssuedCertificate,
    entries: list[tuple[bytes, bytes]],
    alg: bytes = SHA256_RSA,
    digest: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A CRL whose entries are (INTEGER content, Time TLV) exactly as given."""
    body = b"".join(_tlv(0x30, _tlv(0x02, s) + t) for s, t in entries)
    tbs = _tlv(
        0x30,
        _tlv(0x02, b"\x01")
        + alg
        + ca.certificate.subject.public_bytes()
        + _tlv(0x17, b"260316000000Z")
        + _tlv(0x17, b"260317000000Z")
        + _tlv(0x30, body),
    )
    sig = ca.private_key.sign(tbs, padding.PKCS1v15(), digest or hashes.SHA256())
    return _tlv(0x30, tbs + alg + _tlv(0x03, b"\x00" + sig))


def test_odd_entries(pki: TestPki) -> None:
    """Negative serials, over-long serials and in-range GeneralizedTime, as some CAs write them."""
    utc = _tlv(0x17, b"240101000000Z")
    gen = _tlv(0x18, b"20240102030405Z")
    big = (1 << 300) + 12345
    der = hand_made_crl(
        pki.moica,
        [
            (b"\xff\x01", utc),  # -255
            (big.to_bytes(38, "big"), utc),  # longer than the blob's 32-byte limit
            (b"\x07", gen),  # GeneralizedTime inside 1950..2049 (RFC 5280 wants UTCTime)
            (b"\x00", utc),  # serial 0
            (b"\x00" + b"\xab" * 20, utc),  # 160 bits: 21 encoded bytes (cryptography stops at 159)
        ],
    )
    idx = ingest(der, pki.moica.certificate)
    jan1 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert idx.lookup(-255) == (True, jan1)
    assert idx.lookup(big) == (True, jan1)
    assert idx.lookup(7) == (True, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    assert idx.lookup(0) == (True, jan1)
    assert idx.lookup(int.from_bytes(b"\xab" * 20, "big")) == (True, jan1)
    assert idx.width == 20 and len(idx) == 5


def test_malformed_entries_refused(pki: TestPki) -> None:
    utc = _tlv(0x17, b"240101000000Z")
    with pytest.raises(CrlError):  # non-minimal INTEGER: cryptography's parser refuses the CRL
        ingest(hand_made_crl(pki.moica, [(b"\x00\x00\x07", utc)]), pki.moica.certificate)
    with pytest.raises(CrlError):
        ingest(
            hand_made_crl(pki.moica, [(b"\x01", _tlv(0x17, b"24010100000xZ"))]),
            pki.moica.certificate,
        )
    der = bytearray(hand_made_crl(pki.moica, [(b"\x01", utc)]))
    with pytest.raises(CrlError):
        ingest(bytes(der[:-10]), pki.moica.certificate)  # truncated
    with pytest.raises(CrlError):
        ingest(b"\x30\x03\x02\x01\x01", pki.moica.certificate)


def test_large_crl_spot_check(pki: TestPki) -> None:
    """The fast writer's structure (reasonCode on every entry) through the whole pipeline."""
    rng = random.Random(99)
    serials = [rng.getrandbits(127) | (1 << 63) for _ in range(20_000)]
    der = make_crl_der_fast(pki.moica, serials, this_update=T0, crl_number=2026031610)
    idx = ingest(der, pki.moica.certificate)
    assert len(idx) == len(serials) and idx.info.crl_number == 2026031610
    assert all(s in idx for s in serials[:2000])
    assert not any(rng.getrandbits(127) | (1 << 63) in idx for _ in range(2000))
    assert dict(idx.items()) == cryptography_view(der)


# -- what the verifier refuses ---------------------------------------------------------------


def test_other_ca_with_the_same_dn_is_refused(pki: TestPki) -> None:
    twin = make_moica_ca(pki.root)  # same DN, other key (like MOICA G2 vs G3)
    assert twin.certificate.subject == pki.moica.certificate.subject
    with pytest.raises(CrlError, match="authorityKeyIdentifier"):
        ingest(der_of(make_crl(twin, [1])), pki.moica.certificate)
    with pytest.raises(CrlError, match="signature"):  # right AKI, wrong key
        ingest(
            der_of(make_crl(pki.moica, [1], signing_key=twin.private_key)), pki.moica.certificate
        )


def test_wrong_issuer_name_refused(pki: TestPki) -> None:
    with pytest.raises(CrlError, match="issuer name"):
        ingest(der_of(make_crl(pki.root, [1])), pki.moica.certificate)


@pytest.mark.parametrize(
    ("extension", "critical", "match"),
    [
        (x509.DeltaCRLIndicator(1), True, "delta"),
        (
            x509.IssuingDistributionPoint(None, None, False, True, None, False, False),
            True,
            "partial",
        ),
        (
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"),
            True,
            "critical",
        ),
    ],
)
def test_partial_and_delta_crls_refused(
    pki: TestPki, extension: x509.ExtensionType, critical: bool, match: str
) -> None:
    der = der_of(make_crl(pki.moica, [1], extra_extensions=[(extension, critical)]))
    with pytest.raises(CrlError, match=match):
        ingest(der, pki.moica.certificate)


def test_sha1_signed_crl_refused(pki: TestPki) -> None:
    # cryptography's builder will not sign with SHA-1 any more: write it by hand
    der = hand_made_crl(pki.moica, [], SHA1_RSA, hashes.SHA1())  # noqa: S303 - the point
    with pytest.raises(CrlError, match="SHA-1"):
        ingest(der, pki.moica.certificate)


# -- the index file ----------------------------------------------------------------------------


def test_index_file_round_trip(pki: TestPki) -> None:
    rng = random.Random(3)
    entries = {e.serial: e for e in (random_entry(rng) for _ in range(500))}
    idx = ingest(
        der_of(make_crl(pki.moica, entries.values(), this_update=T0)), pki.moica.certificate
    )
    again = CrlIndex.from_file_bytes(idx.to_file_bytes())
    assert again.info == idx.info
    assert dict(again.items()) == dict(idx.items())
    assert (again.width, again.mask, again.blob, again.dates) == (
        idx.width,
        idx.mask,
        idx.blob,
        idx.dates,
    )


def test_index_file_damage_detected(pki: TestPki) -> None:
    data = bytearray(
        ingest(der_of(make_crl(pki.moica, [1, 2])), pki.moica.certificate).to_file_bytes()
    )
    for pos in (0, 20, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        with pytest.raises(CrlError):
            CrlIndex.from_file_bytes(bytes(bad))
    with pytest.raises(CrlError):
        CrlIndex.from_file_bytes(bytes(data[:-40]))


class FakeFetcher:
    def __init__(self, der: bytes | None = None) -> None:
        self.der = der
        self.calls = 0

    def __call__(self, url: str, timeout: float, max_bytes: int) -> bytes:
        self.calls += 1
        if self.der is None:
            raise OSError("network is down (fake)")
        return self.der


def store_for(
    pki: TestPki, state: Path, fetch: FakeFetcher, config: CrlStoreConfig | None = None
) -> CrlStore:
    return CrlStore(
        [CrlSource(pki.moica.certificate, "http://crl.test/moica.crl")], state, config, fetch=fetch
    )


def test_store_persists_and_reloads_without_download(
    pki: TestPki, citizen: x509.Certificate, tmp_path: Path
) -> None:
    der = der_of(make_crl(pki.moica, [citizen.serial_number], this_update=T0))
    fetch = FakeFetcher(der)
    store = store_for(pki, tmp_path, fetch)
    assert store.refresh_due(T0)
    [outcome] = store.refresh(T0)
    assert outcome.ok and fetch.calls == 1
    files = list((tmp_path / "crl").iterdir())
    assert [f.name for f in files] == [f"{crlmod.key_id(pki.moica.certificate).hex()}.idx"]

    fetch2 = FakeFetcher(None)
    reloaded = store_for(pki, tmp_path, fetch2)
    result = reloaded.check(citizen, pki.moica.certificate, now=T0 + dt.timedelta(hours=1))
    assert result.status is RevocationStatus.REVOKED and result.method == "crl"
    assert fetch2.calls == 0


def test_corrupted_index_refused_and_rebuilt(
    pki: TestPki, citizen: x509.Certificate, tmp_path: Path
) -> None:
    der = der_of(make_crl(pki.moica, [citizen.serial_number], this_update=T0))
    store_for(pki, tmp_path, FakeFetcher(der)).refresh(T0)
    [path] = (tmp_path / "crl").iterdir()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))

    fetch = FakeFetcher(der)
    store = store_for(pki, tmp_path, fetch)
    assert store.index(crlmod.key_id(pki.moica.certificate)) is None
    assert not path.exists()  # refused and removed
    assert store.check(citizen, pki.moica.certificate, now=T0).status is RevocationStatus.UNKNOWN
    assert store.refresh_due(T0)
    store.refresh(T0)
    assert fetch.calls == 1 and path.exists()
    CrlIndex.from_file_bytes(path.read_bytes())  # whole again
    assert store.check(citizen, pki.moica.certificate, now=T0).status is RevocationStatus.REVOKED


def test_write_atomic_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.idx"
    crlmod.write_atomic(target, b"one")
    crlmod.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.idx"]


# -- freshness, grace, refresh scheduling (fixed clocks) --------------------------------------


@pytest.fixture
def held(pki: TestPki, citizen: x509.Certificate, tmp_path: Path) -> CrlStore:
    """A store holding a CRL (thisUpdate T0, nextUpdate T0 + 1 day) that lists serial 42."""
    der = der_of(make_crl(pki.moica, [RevokedEntry(42, T0 - dt.timedelta(days=9))], this_update=T0))
    config = CrlStoreConfig(grace=dt.timedelta(hours=24))
    store = store_for(pki, tmp_path, FakeFetcher(der), config)
    store.refresh(T0)
    return store


def serial_cert(pki: TestPki, citizen: x509.Certificate, serial: int) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(citizen.subject)
        .issuer_name(pki.moica.certificate.subject)
        .public_key(citizen.public_key())
        .serial_number(serial)
        .not_valid_before(citizen.not_valid_before_utc)
        .not_valid_after(citizen.not_valid_after_utc)
    )
    return builder.sign(pki.moica.private_key, hashes.SHA256())


@pytest.mark.parametrize(
    ("offset", "status", "method", "detail"),
    [
        (dt.timedelta(hours=1), RevocationStatus.GOOD, "crl", "not listed"),
        (dt.timedelta(days=1), RevocationStatus.GOOD, "crl", "not listed"),  # nextUpdate itself
        (dt.timedelta(days=1, hours=1), RevocationStatus.GOOD, "crl-cached", "expired"),
        (dt.timedelta(days=2), RevocationStatus.GOOD, "crl-cached", "expired"),  # end of grace
        (dt.timedelta(days=2, seconds=1), RevocationStatus.UNKNOWN, "crl", "crl_expired"),
        (-dt.timedelta(minutes=16), RevocationStatus.UNKNOWN, "crl", "crl_not_yet_valid"),
        (-dt.timedelta(minutes=14), RevocationStatus.GOOD, "crl", "not listed"),
    ],
)
def test_freshness_and_grace(
    held: CrlStore,
    pki: TestPki,
    citizen: x509.Certificate,
    offset: dt.timedelta,
    status: RevocationStatus,
    method: str,
    detail: str,
) -> None:
    result = held.check(citizen, pki.moica.certificate, now=T0 + offset)
    assert (result.status, result.method) == (status, method)
    assert detail in result.detail


@pytest.mark.parametrize(
    ("offset", "method"),
    [
        (dt.timedelta(hours=1), "crl"),
        (dt.timedelta(days=1, hours=1), "crl-cached"),
        (dt.timedelta(days=30), "crl-cached"),
    ],
)
def test_listed_serial_is_revoked_at_any_age(
    held: CrlStore, pki: TestPki, citizen: x509.Certificate, offset: dt.timedelta, method: str
) -> None:
    result = held.check(serial_cert(pki, citizen, 42), pki.moica.certificate, now=T0 + offset)
    assert (result.status, result.method) == (RevocationStatus.REVOKED, method)
    assert result.revoked_at == T0 - dt.timedelta(days=9) and result.produced_at == T0


def test_unknown_issuer(held: CrlStore, pki: TestPki, citizen: x509.Certificate) -> None:
    result = held.check(citizen, pki.root.certificate, now=T0)
    assert result.status is RevocationStatus.UNKNOWN and result.detail.startswith("no_crl")


def test_refresh_schedule(pki: TestPki, tmp_path: Path) -> None:
    config = CrlStoreConfig(
        poll_interval=dt.timedelta(hours=6),
        refresh_margin=dt.timedelta(hours=1),
        retry_min=dt.timedelta(minutes=5),
    )
    fetch = FakeFetcher(der_of(make_crl(pki.moica, [1], this_update=T0)))
    store = store_for(pki, tmp_path, fetch, config)
    assert store.refresh_due(T0)
    store.refresh(T0)
    assert not store.refresh_due(T0 + dt.timedelta(hours=5))
    assert store.refresh_due(T0 + dt.timedelta(hours=6))  # poll interval
    store.refresh(T0 + dt.timedelta(hours=6))  # same CRL again: nothing rebuilt
    assert fetch.calls == 2
    assert not store.refresh_due(T0 + dt.timedelta(hours=11))
    assert store.refresh_due(T0 + dt.timedelta(hours=23))  # an hour before nextUpdate
    store.refresh(T0 + dt.timedelta(hours=23))  # the CA has nothing newer yet
    assert not store.refresh_due(T0 + dt.timedelta(hours=23, minutes=4))
    assert store.refresh_due(T0 + dt.timedelta(hours=23, minutes=5))  # asked every retry_min
    assert fetch.calls == 3

    fetch.der = None  # offline from now on
    t = T0 + dt.timedelta(hours=23, minutes=5)
    [outcome] = store.refresh(t)
    assert not outcome.ok and "down" in outcome.detail
    assert not store.refresh_due(t + dt.timedelta(minutes=4))
    assert store.refresh_due(t + dt.timedelta(minutes=5))
    store.refresh(t + dt.timedelta(minutes=5))
    assert not store.refresh_due(t + dt.timedelta(minutes=14))  # backoff doubled: 10 min
    assert store.refresh_due(t + dt.timedelta(minutes=15))
    # the held CRL still answers
    assert store.index(crlmod.key_id(pki.moica.certificate)) is not None


def test_older_crl_is_not_installed(pki: TestPki, tmp_path: Path) -> None:
    newer = der_of(make_crl(pki.moica, [1], this_update=T0, crl_number=5))
    older = der_of(make_crl(pki.moica, [], this_update=T0 - dt.timedelta(days=1), crl_number=4))
    fetch = FakeFetcher(newer)
    store = store_for(pki, tmp_path, fetch)
    store.refresh(T0)
    fetch.der = older
    [outcome] = store.refresh(T0, force=True)
    assert not outcome.ok and "older" in outcome.detail
    idx = store.index(crlmod.key_id(pki.moica.certificate))
    assert idx is not None and idx.info.crl_number == 5 and 1 in idx


def test_background_refresher(pki: TestPki, citizen: x509.Certificate, tmp_path: Path) -> None:
    fetch = FakeFetcher(der_of(make_crl(pki.moica, [citizen.serial_number])))
    store = store_for(pki, tmp_path, fetch, CrlStoreConfig(wake_interval=0.02))
    store.start()
    try:
        kid = crlmod.key_id(pki.moica.certificate)
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
        while store.index(kid) is None and dt.datetime.now(dt.UTC) < deadline:
            import time

            time.sleep(0.02)
        assert store.index(kid) is not None
    finally:
        store.stop()
    now = dt.datetime.now(dt.UTC)
    assert store.check(citizen, pki.moica.certificate, now=now).status is RevocationStatus.REVOKED
    assert fetch.calls == 1  # nothing was due on later wake-ups


def test_http_fetch_refuses_other_schemes() -> None:
    with pytest.raises(OSError, match="non-HTTP"):
        crlmod.http_fetch("file:///etc/passwd", 1.0, 100)
