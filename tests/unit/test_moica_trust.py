# SPDX-License-Identifier: Apache-2.0
"""Trust anchors: the pins, the real GRCA/MOICA files, refusing tampered ones, fetching, AKI lookup.

The real CA certificates are read from ../shared/trust (never copied into the repository; copies
made here live in pytest's tmp_path). Fetching is tested against a local HTTP server on
127.0.0.1; the official URLs are never contacted.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from cardd.errors import CardDataInvalid, TrustAnchorInvalid
from cardd.moica import trust as trust_mod
from cardd.moica.profile import (
    certificate_serial_hex,
    parse_profile,
    read_id_last4,
    subject_attribute,
)
from cardd.moica.trust import (
    OFFICIAL_URLS,
    PINNED,
    TrustStore,
    authority_key_id,
    download,
    fetch_anchors,
    fingerprint_sha256,
    load_certificates,
    pinned_certificate,
    pinned_generation_for_key_id,
    subject_key_id,
)
from cardd.sim import testpki
from cardd.sim.testpki import IssuedCertificate

SHARED_TRUST = Path(__file__).parents[2].parent / "shared" / "trust"
NAMES = ("GRCA-G2", "MOICA-G2", "GRCA-G3", "MOICA-G3")
NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def real_dir() -> Path:
    if not all((SHARED_TRUST / f"{n}.pem").is_file() for n in NAMES):
        pytest.skip(f"the real GRCA/MOICA certificates are not in {SHARED_TRUST} (../shared/trust)")
    return SHARED_TRUST


@pytest.fixture(scope="module")
def real(real_dir: Path) -> dict[str, x509.Certificate]:
    return {n: x509.load_pem_x509_certificate((real_dir / f"{n}.pem").read_bytes()) for n in NAMES}


@pytest.fixture(scope="module")
def pki() -> testpki.TestPki:
    return testpki.make_test_pki()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def tamper_pem(data: bytes) -> bytes:
    """One byte of the PEM body changed (a base64 character, so the file still looks like PEM)."""
    text = bytearray(data)
    # well inside the body: past the header line, away from the end
    pos = data.index(b"\n") + 200
    text[pos] = ord("B") if text[pos] != ord("B") else ord("C")
    return bytes(text)


# -- the pins and the real certificates -----------------------------------------------------


def test_pins_match_the_readme_and_moica_md() -> None:
    pins = {p.name: p for p in PINNED}
    assert set(pins) == set(NAMES)
    assert (
        pins["MOICA-G2"].sha256
        == "c4c462de463f856804dc898338d2cecb55fba74155851599d8fb7d70218fd1be"
    )
    assert (
        pins["MOICA-G3"].sha256
        == "ed793fd0d50a2a398049d598982cf01e75f873b532066caec238f800a06ca9da"
    )
    assert (
        pins["GRCA-G2"].sha256 == "70b922bfda0e3f4a342e4ee22d579ae598d071cc5ec9c30f123680340388aea5"
    )
    assert (
        pins["GRCA-G3"].sha256 == "57df6f20e04c588e85f35be8832f5d4e78958336ae3b18fb7c9bae0dfead4044"
    )
    assert {n: p.role for n, p in pins.items()} == {
        "GRCA-G2": "root",
        "MOICA-G2": "moica",
        "GRCA-G3": "root",
        "MOICA-G3": "moica",
    }


def test_official_urls_are_the_readme_ones(real_dir: Path) -> None:
    readme = (real_dir / "README.md").read_text(encoding="utf-8")
    for name, url in OFFICIAL_URLS.items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| {name}.pem"))
        assert url in row
        assert re.search(rf"\b{dict((p.name, p.sha256) for p in PINNED)[name]}\b", row)


@pytest.mark.parametrize("name", NAMES)
def test_real_certificate_matches_its_pin(name: str, real: dict[str, x509.Certificate]) -> None:
    pin = pinned_certificate(real[name])
    assert pin is not None and pin.name == name
    assert fingerprint_sha256(real[name]) == pin.sha256
    assert subject_key_id(real[name]) == pin.key_id


@pytest.mark.parametrize("generation", ["G2", "G3"])
def test_real_moica_is_signed_by_its_grca(
    generation: str, real: dict[str, x509.Certificate]
) -> None:
    moica, grca = real[f"MOICA-{generation}"], real[f"GRCA-{generation}"]
    moica.verify_directly_issued_by(grca)
    assert authority_key_id(moica) == subject_key_id(grca)


def test_real_moica_g2_and_g3_share_a_dn_but_not_a_key(real: dict[str, x509.Certificate]) -> None:
    g2, g3 = real["MOICA-G2"], real["MOICA-G3"]
    assert g2.subject == g3.subject
    assert g2.subject.public_bytes() == g3.subject.public_bytes()  # byte-identical
    assert subject_key_id(g2) != subject_key_id(g3)


def test_real_directory_loads_as_a_pinned_store(
    real_dir: Path, real: dict[str, x509.Certificate]
) -> None:
    store = TrustStore.from_directory(real_dir)
    assert store.pinned
    assert sorted((a.name, a.generation) for a in store.anchors) == [
        ("MOICA-G2", "G2"),
        ("MOICA-G3", "G3"),
    ]
    assert {fingerprint_sha256(r) for r in store.roots} == {
        fingerprint_sha256(real["GRCA-G2"]),
        fingerprint_sha256(real["GRCA-G3"]),
    }
    assert "MOICA-G2" in repr(store)


def test_real_store_selects_generation_by_key_id(
    real_dir: Path, real: dict[str, x509.Certificate]
) -> None:
    store = TrustStore.from_directory(real_dir)
    for generation in ("G2", "G3"):
        anchor = store.anchor_for_key_id(subject_key_id(real[f"MOICA-{generation}"]))
        assert anchor is not None and anchor.generation == generation
    assert store.anchor_for_key_id(subject_key_id(real["GRCA-G2"])) is None  # roots never anchor
    assert store.anchor_for_key_id(None) is None
    assert store.anchor_for_key_id(b"") is None


def test_pinned_generation_for_key_id(real: dict[str, x509.Certificate]) -> None:
    assert pinned_generation_for_key_id(subject_key_id(real["MOICA-G2"])) == "G2"
    assert pinned_generation_for_key_id(subject_key_id(real["MOICA-G3"])) == "G3"
    assert pinned_generation_for_key_id(subject_key_id(real["GRCA-G3"])) is None
    assert pinned_generation_for_key_id(None) is None


def test_pinned_store_built_by_hand(real: dict[str, x509.Certificate]) -> None:
    store = TrustStore(
        [real["MOICA-G2"], real["MOICA-G3"]], pinned=True, roots=[real["GRCA-G2"], real["GRCA-G3"]]
    )
    assert len(store.anchors) == 2


def test_pinned_store_without_roots_is_fine(real: dict[str, x509.Certificate]) -> None:
    assert len(TrustStore([real["MOICA-G3"]], True).anchors) == 1


def test_real_moica_in_an_unpinned_store_keeps_its_generation(
    real: dict[str, x509.Certificate],
) -> None:
    store = TrustStore([real["MOICA-G2"]], pinned=False)
    assert store.anchors[0].generation == "G2"


# -- refusing what is not pinned -------------------------------------------------------------


def test_pinned_store_refuses_a_test_ca(pki: testpki.TestPki) -> None:
    with pytest.raises(TrustAnchorInvalid, match="not a pinned MOICA certificate") as exc:
        TrustStore([pki.moica.certificate], pinned=True)
    assert exc.value.code == "trust_anchor_invalid"


def test_pinned_store_refuses_grca_as_an_anchor(real: dict[str, x509.Certificate]) -> None:
    with pytest.raises(TrustAnchorInvalid, match="root"):
        TrustStore([real["GRCA-G3"]], pinned=True)


def test_pinned_store_refuses_an_unpinned_root(
    real: dict[str, x509.Certificate], pki: testpki.TestPki
) -> None:
    with pytest.raises(TrustAnchorInvalid, match="not a pinned GRCA"):
        TrustStore([real["MOICA-G3"]], pinned=True, roots=[pki.root.certificate])


def test_pinned_store_refuses_moica_as_a_root(real: dict[str, x509.Certificate]) -> None:
    with pytest.raises(TrustAnchorInvalid, match="not a pinned GRCA"):
        TrustStore([real["MOICA-G3"]], pinned=True, roots=[real["MOICA-G2"]])


def test_unpinned_store_takes_a_test_ca_explicitly(pki: testpki.TestPki) -> None:
    store = TrustStore([pki.moica.certificate], pinned=False, roots=[pki.root.certificate])
    anchor = store.anchors[0]
    assert anchor.generation == "test" and anchor.name.startswith("test-")
    assert not store.pinned


def test_tampered_copy_is_refused(real_dir: Path, tmp_path: Path) -> None:
    shutil.copy(real_dir / "MOICA-G3.pem", tmp_path / "MOICA-G3.pem")
    (tmp_path / "MOICA-G2.pem").write_bytes(tamper_pem((real_dir / "MOICA-G2.pem").read_bytes()))
    with pytest.raises(TrustAnchorInvalid, match="MOICA-G2.pem"):
        TrustStore.from_directory(tmp_path)


def test_one_byte_changed_in_der_is_refused(
    real: dict[str, x509.Certificate], tmp_path: Path
) -> None:
    data = bytearray(der(real["MOICA-G2"]))
    data[-10] ^= 0x01  # inside the signature: still parses, different fingerprint
    (tmp_path / "MOICA2.cer").write_bytes(bytes(data))
    with pytest.raises(TrustAnchorInvalid, match="not a pinned"):
        TrustStore.from_directory(tmp_path)


def test_another_valid_cert_renamed_is_refused(pki: testpki.TestPki, tmp_path: Path) -> None:
    (tmp_path / "MOICA-G2.pem").write_bytes(pki.moica.pem())
    with pytest.raises(TrustAnchorInvalid, match="not a pinned"):
        TrustStore.from_directory(tmp_path)


def test_another_pinned_cert_under_a_pinned_name_is_refused(real_dir: Path, tmp_path: Path) -> None:
    shutil.copy(real_dir / "MOICA-G3.pem", tmp_path / "MOICA-G2.pem")
    with pytest.raises(TrustAnchorInvalid, match="named for MOICA-G2 but holds MOICA-G3"):
        TrustStore.from_directory(tmp_path)


def test_official_file_names_and_der_are_accepted(
    real: dict[str, x509.Certificate], tmp_path: Path
) -> None:
    (tmp_path / "MOICA2.cer").write_bytes(der(real["MOICA-G2"]))
    (tmp_path / "MOICA-G3.cer").write_bytes(der(real["MOICA-G3"]))
    (tmp_path / "GRCAG3.crt").write_bytes(der(real["GRCA-G3"]))
    (tmp_path / "README.md").write_text("not a certificate")
    (tmp_path / "complete.crl").write_bytes(b"\x30\x00")
    store = TrustStore.from_directory(tmp_path)
    assert sorted(a.generation for a in store.anchors) == ["G2", "G3"]


def test_a_pinned_cert_under_any_other_name_is_accepted(
    real: dict[str, x509.Certificate], tmp_path: Path
) -> None:
    (tmp_path / "citizen-ca.pem").write_bytes(pem(real["MOICA-G3"]))
    (tmp_path / "copy-of-citizen-ca.der").write_bytes(der(real["MOICA-G3"]))  # duplicates collapse
    assert [a.name for a in TrustStore.from_directory(tmp_path).anchors] == ["MOICA-G3"]


def test_pem_bundle_is_accepted(real: dict[str, x509.Certificate], tmp_path: Path) -> None:
    (tmp_path / "bundle.pem").write_bytes(b"".join(pem(real[n]) for n in NAMES))
    assert len(TrustStore.from_directory(tmp_path).anchors) == 2


def test_pem_bundle_with_one_unpinned_cert_is_refused(
    real: dict[str, x509.Certificate], pki: testpki.TestPki, tmp_path: Path
) -> None:
    (tmp_path / "bundle.pem").write_bytes(pem(real["MOICA-G3"]) + pki.moica.pem())
    with pytest.raises(TrustAnchorInvalid):
        TrustStore.from_directory(tmp_path)


def test_directory_with_only_roots_is_refused(real_dir: Path, tmp_path: Path) -> None:
    shutil.copy(real_dir / "GRCA-G2.pem", tmp_path)
    with pytest.raises(TrustAnchorInvalid, match="no MOICA"):
        TrustStore.from_directory(tmp_path)


def test_empty_or_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrustAnchorInvalid, match="no MOICA"):
        TrustStore.from_directory(tmp_path)
    with pytest.raises(TrustAnchorInvalid, match="does not exist"):
        TrustStore.from_directory(tmp_path / "nope")


def test_unparseable_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "MOICA-G2.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(TrustAnchorInvalid, match="not a certificate"):
        TrustStore.from_directory(tmp_path)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.der").write_bytes(b"\x00" * (trust_mod.MAX_CERTIFICATE_FILE_BYTES + 1))
    with pytest.raises(TrustAnchorInvalid, match="too large"):
        TrustStore.from_directory(tmp_path)


# -- anchor sanity (both modes) ---------------------------------------------------------------


def _ca(**kw: object) -> IssuedCertificate:
    """A CA-ish certificate with chosen basicConstraints / keyUsage / SKI."""
    key = testpki.new_rsa_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, "測試")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(testpki.random_serial())
        .not_valid_before(testpki.DEFAULT_NOT_BEFORE)
        .not_valid_after(testpki.DEFAULT_NOT_AFTER)
    )
    if kw.get("ca", True) is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=bool(kw.get("ca", True)), path_length=None), critical=True
        )
    if kw.get("cert_sign", True) is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                False,
                False,
                False,
                False,
                False,
                bool(kw.get("cert_sign", True)),
                True,
                False,
                False,
            ),
            critical=True,
        )
    ski = kw.get("ski", x509.SubjectKeyIdentifier.from_public_key(key.public_key()))
    if ski is not None:
        builder = builder.add_extension(ski, critical=False)  # type: ignore[arg-type]
    return IssuedCertificate(builder.sign(key, hashes.SHA256()), key)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"ca": False}, "not a CA"),
        ({"ca": None}, "not a CA"),
        ({"cert_sign": False}, "keyCertSign"),
        ({"ski": None}, "subjectKeyIdentifier"),
    ],
)
def test_anchor_must_be_a_ca_with_a_key_identifier(kw: dict[str, object], message: str) -> None:
    with pytest.raises(TrustAnchorInvalid, match=message):
        TrustStore([_ca(**kw).certificate], pinned=False)


def test_anchor_without_key_usage_is_accepted() -> None:
    assert len(TrustStore([_ca(cert_sign=None).certificate], pinned=False).anchors) == 1


def test_no_anchor_at_all_is_refused() -> None:
    with pytest.raises(TrustAnchorInvalid, match="no MOICA trust anchor"):
        TrustStore([], pinned=False)


def test_same_anchor_twice_collapses(pki: testpki.TestPki) -> None:
    assert len(TrustStore([pki.moica.certificate] * 2, pinned=False).anchors) == 1


def test_two_anchors_with_one_key_identifier_are_refused(pki: testpki.TestPki) -> None:
    ski = pki.moica.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    clash = _ca(ski=ski)
    with pytest.raises(TrustAnchorInvalid, match="share the key identifier"):
        TrustStore([pki.moica.certificate, clash.certificate], pinned=False)


def test_anchor_not_signed_by_its_root_is_refused(pki: testpki.TestPki) -> None:
    # A "root" claiming the real root's key identifier, with another key.
    root_ski = pki.root.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    impostor = _ca(ski=root_ski)
    with pytest.raises(TrustAnchorInvalid, match="not validly signed"):
        TrustStore([pki.moica.certificate], pinned=False, roots=[impostor.certificate])


def test_anchor_with_unrelated_roots_is_fine(pki: testpki.TestPki) -> None:
    other = testpki.make_root()
    assert (
        len(TrustStore([pki.moica.certificate], pinned=False, roots=[other.certificate]).anchors)
        == 1
    )


def test_issuer_of_selects_by_aki_among_same_dn_anchors() -> None:
    a, b = testpki.make_test_pki(), testpki.make_test_pki()
    assert a.moica.certificate.subject == b.moica.certificate.subject
    store = TrustStore([a.moica.certificate, b.moica.certificate], pinned=False)
    for pki in (a, b):
        leaf = pki.issue_citizen("王小明", "1234567890123456", "6789").signing.certificate
        anchor = store.issuer_of(leaf)
        assert anchor is not None and anchor.certificate == pki.moica.certificate
    assert store.issuer_of(a.root.certificate) is None  # self-signed root: no AKI


def test_trust_anchor_is_frozen(pki: testpki.TestPki) -> None:
    anchor = TrustStore([pki.moica.certificate], pinned=False).anchors[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        anchor.generation = "G3"  # type: ignore[misc]


def test_load_certificates_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        load_certificates(b"garbage")


# -- fetching from a local server --------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(
    tmp_path: Path, real_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Path]]:
    """A 127.0.0.1 HTTP server over a directory holding copies of the real files."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    for name in NAMES:
        shutil.copy(real_dir / f"{name}.pem", root / f"{name}.pem")
    (root / "MOICA-G2-tampered.pem").write_bytes(
        tamper_pem((real_dir / "MOICA-G2.pem").read_bytes())
    )
    cert = x509.load_pem_x509_certificate((real_dir / "MOICA-G3.pem").read_bytes())
    (root / "MOICA-G3.cer").write_bytes(der(cert))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "anchors"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _urls(base: str, **overrides: str) -> dict[str, str]:
    urls = {name: f"{base}/{name}.pem" for name in NAMES}
    urls.update({k.replace("_", "-"): f"{base}/{v}" for k, v in overrides.items()})
    return urls


def test_fetch_writes_all_pinned_files(served: tuple[str, Path]) -> None:
    base, dest = served
    written = fetch_anchors(dest, _urls(base))
    assert sorted(p.name for p in written) == sorted(f"{n}.pem" for n in NAMES)
    store = TrustStore.from_directory(dest)
    assert sorted(a.generation for a in store.anchors) == ["G2", "G3"]
    assert len(store.roots) == 2


def test_fetch_accepts_der(served: tuple[str, Path]) -> None:
    base, dest = served
    fetch_anchors(dest, {"MOICA-G3": f"{base}/MOICA-G3.cer"})
    assert (dest / "MOICA-G3.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_fetch_refuses_a_tampered_file_and_writes_nothing(served: tuple[str, Path]) -> None:
    base, dest = served
    with pytest.raises(TrustAnchorInvalid, match="MOICA-G2"):
        fetch_anchors(dest, _urls(base, MOICA_G2="MOICA-G2-tampered.pem"))
    assert not dest.exists() or list(dest.iterdir()) == []


def test_fetch_refuses_another_valid_cert_at_the_url(served: tuple[str, Path]) -> None:
    base, dest = served
    with pytest.raises(TrustAnchorInvalid, match="the pinned one is"):
        fetch_anchors(dest, {"MOICA-G2": f"{base}/MOICA-G3.pem"})
    assert not (dest / "MOICA-G2.pem").exists()


def test_fetch_refuses_a_missing_file(served: tuple[str, Path]) -> None:
    base, dest = served
    with pytest.raises(TrustAnchorInvalid, match="download from .* failed"):
        fetch_anchors(dest, {"MOICA-G2": f"{base}/nope.pem"})


def test_fetch_keeps_existing_files_when_refusing(served: tuple[str, Path], real_dir: Path) -> None:
    base, dest = served
    dest.mkdir()
    shutil.copy(real_dir / "MOICA-G2.pem", dest / "MOICA-G2.pem")
    before = (dest / "MOICA-G2.pem").read_bytes()
    with pytest.raises(TrustAnchorInvalid):
        fetch_anchors(dest, _urls(base, MOICA_G2="MOICA-G2-tampered.pem"))
    assert (dest / "MOICA-G2.pem").read_bytes() == before
    assert sorted(p.name for p in dest.iterdir()) == ["MOICA-G2.pem"]  # no temp files left


def test_fetch_refuses_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(TrustAnchorInvalid, match="not a pinned certificate"):
        fetch_anchors(tmp_path, {"MOEACA": "http://127.0.0.1:1/x"}, opener=lambda url: b"")


def test_fetch_with_a_custom_opener_never_touches_the_network(
    real: dict[str, x509.Certificate], tmp_path: Path
) -> None:
    asked: list[str] = []

    def opener(url: str) -> bytes:
        asked.append(url)
        name = next(n for n, u in OFFICIAL_URLS.items() if u == url)
        return der(real[name])

    fetch_anchors(tmp_path, opener=opener)
    assert sorted(asked) == sorted(OFFICIAL_URLS.values())
    assert len(TrustStore.from_directory(tmp_path).anchors) == 2


def test_fetch_refuses_a_bundle(real: dict[str, x509.Certificate], tmp_path: Path) -> None:
    bundle = pem(real["MOICA-G2"]) + pem(real["MOICA-G3"])
    with pytest.raises(TrustAnchorInvalid, match="2 certificates"):
        fetch_anchors(tmp_path, {"MOICA-G2": "x"}, opener=lambda url: bundle)


def test_fetch_wraps_opener_errors(tmp_path: Path) -> None:
    def opener(url: str) -> bytes:
        raise OSError("connection refused")

    with pytest.raises(TrustAnchorInvalid, match="connection refused"):
        fetch_anchors(tmp_path, {"MOICA-G3": "https://example.invalid/x"}, opener=opener)


def test_download_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="only http and https"):
        download("file:///etc/passwd")


def test_download_caps_the_size(served: tuple[str, Path]) -> None:
    base, _ = served
    with pytest.raises(ValueError, match="more than 100 bytes"):
        download(f"{base}/MOICA-G3.pem", max_bytes=100)


# -- the certificate profile (cardd.moica.profile) ----------------------------------------------


def test_citizen_signing_profile(pki: testpki.TestPki) -> None:
    citizen = pki.issue_citizen("王小明", "1234567890123456", "6789")
    profile = parse_profile(citizen.signing.der())
    assert profile.common_name == "王小明"
    assert profile.subject_serial_number == "1234567890123456"
    assert profile.id_last4 == "6789"
    assert profile.usage == "sign" and profile.key_usage == {"digital_signature"}
    assert not profile.is_ca
    assert profile.generation is None  # a test issuer is not a pinned generation
    assert (
        parse_profile(
            citizen.signing.certificate, trust=TrustStore([pki.moica.certificate], pinned=False)
        ).generation
        == "test"
    )
    assert profile.certificate_serial == certificate_serial_hex(citizen.signing.certificate)
    assert "王小明" not in repr(profile) and "6789" not in repr(profile)


def test_citizen_encryption_profile(pki: testpki.TestPki) -> None:
    profile = parse_profile(
        pki.issue_citizen("陳美玲", "0000000000000001", "0001").encryption.certificate
    )
    assert profile.usage == "encrypt"
    assert profile.key_usage == {"key_encipherment", "data_encipherment"}
    assert profile.common_name == "陳美玲"


def test_ca_profile_has_no_cn(pki: testpki.TestPki) -> None:
    profile = parse_profile(pki.moica.certificate)
    assert profile.common_name is None and profile.usage == "ca" and profile.is_ca
    assert profile.id_last4 is None and profile.subject_serial_number is None


def test_real_moica_profile(real: dict[str, x509.Certificate]) -> None:
    g3 = parse_profile(real["MOICA-G3"])
    assert g3.common_name is None  # the real CA subject has no CN
    assert (
        g3.usage == "ca" and "key_cert_sign" in g3.key_usage and "digital_signature" in g3.key_usage
    )
    assert g3.subject_key_id == bytes.fromhex("4720A3B1264BCD6D48ACF2640886972C7454115F")
    assert (
        subject_attribute(real["MOICA-G3"].subject, x509.NameOID.ORGANIZATIONAL_UNIT_NAME)
        == "內政部憑證管理中心"
    )


def test_profile_of_garbage_is_card_data_invalid() -> None:
    with pytest.raises(CardDataInvalid):
        parse_profile(b"\x30\x03\x02\x01\x01")


def test_serial_hex_is_even_length_upper_case(pki: testpki.TestPki) -> None:
    text = certificate_serial_hex(pki.moica.certificate)
    assert len(text) % 2 == 0 and text == text.upper()
    assert int(text, 16) == pki.moica.certificate.serial_number


def _leaf_with_sda(pki: testpki.TestPki, sda: bytes | None) -> x509.Certificate:
    key = testpki.new_rsa_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(testpki.citizen_subject("王小明", "1234567890123456"))
        .issuer_name(pki.moica.certificate.subject)
        .public_key(key.public_key())
        .serial_number(testpki.random_serial())
        .not_valid_before(testpki.DEFAULT_NOT_BEFORE)
        .not_valid_after(testpki.DEFAULT_NOT_AFTER)
    )
    if sda is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(testpki.OID_SUBJECT_DIRECTORY_ATTRIBUTES, sda),
            critical=False,
        )
    return builder.sign(pki.moica.private_key, hashes.SHA256())


def _sda(oid_der: bytes, value_tlv: bytes) -> bytes:
    tlv = testpki._tlv
    return tlv(0x30, tlv(0x30, oid_der + tlv(0x31, value_tlv)))


_LAST4_OID = testpki._oid_der(testpki.OID_SUBJECT_ID_LAST4)


@pytest.mark.parametrize(
    ("sda", "expected"),
    [
        (_sda(_LAST4_OID, testpki._tlv(0x0C, b"6789")), "6789"),  # UTF8String
        (_sda(_LAST4_OID, testpki._tlv(0x16, b"6789")), "6789"),  # IA5String
        (_sda(_LAST4_OID, testpki._tlv(0x1E, "6789".encode("utf-16-be"))), "6789"),  # BMPString
        (_sda(_LAST4_OID, testpki._tlv(0x13, b"678")), None),  # not 4 characters
        (_sda(_LAST4_OID, testpki._tlv(0x02, b"\x01")), None),  # not a string
        (
            _sda(testpki._oid_der(x509.ObjectIdentifier("1.2.3.4")), testpki._tlv(0x13, b"6789")),
            None,
        ),
        (b"\x30\x05\x00", None),  # malformed
        (None, None),  # no extension
    ],
)
def test_sda_last4_string_types_and_malformations(
    sda: bytes | None, expected: str | None, pki: testpki.TestPki
) -> None:
    assert read_id_last4(_leaf_with_sda(pki, sda)) == expected


def test_base64_helper_sanity() -> None:
    # guard for tamper_pem: the changed byte lands inside the base64 body
    data = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(b"\x00" * 400)
        + b"-----END CERTIFICATE-----\n"
    )
    changed = tamper_pem(data)
    assert changed != data and len(changed) == len(data)
    assert changed.count(b"-----") == data.count(b"-----")
