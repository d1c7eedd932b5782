# SPDX-License-Identifier: Apache-2.0
"""Trust anchors for citizen certificates: pinned MOICA G2/G3, with GRCA only to check them.

Anchor rule (moica.md §6.2): end-entity certificates are validated against **MOICA G2 and G3**,
never against GRCA: anchoring at GRCA would also accept MOEACA, GCA and XCA certificates. GRCA
G2/G3 are loaded only to check the MOICA certificates' signatures.

Pins: the SHA-256 of each certificate's DER (moica.md §6.1, /work/shared/trust/README.md). A
production store is built from pinned files only (:meth:`TrustStore.from_directory`); a file
whose fingerprint is not pinned is refused with :class:`~cardd.errors.TrustAnchorInvalid`, never
skipped, so a tampered or swapped file stops start-up instead of silently shrinking the store.

Tests use their own CA (:mod:`cardd.sim.testpki`) by building ``TrustStore([ca], pinned=False)``
explicitly. There is deliberately no global switch that turns the pin check off: an unpinned
store exists only where code constructs one by hand, and it labels its anchors ``"test"``.

Generations: MOICA G2 and G3 have byte-identical subject DNs, so an issuer is always selected by
key identifier (the leaf's AKI equals the anchor's SKI), never by name.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from cardd import __version__
from cardd.errors import TrustAnchorInvalid

logger = logging.getLogger(__name__)

#: generation label of anchors that are not pinned government certificates (test PKIs)
TEST_GENERATION = "test"

#: file suffixes read from an anchor directory; anything else (README.md, CRLs) is ignored
CERTIFICATE_SUFFIXES = frozenset({".pem", ".crt", ".cer", ".der"})

# A CA certificate is a few KiB; the cap stops a hostile or broken server (or a huge file put in
# the directory by mistake) from making us read megabytes.
MAX_CERTIFICATE_FILE_BYTES = 256 * 1024
DOWNLOAD_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class PinnedCertificate:
    """One government CA certificate cardd trusts by fingerprint."""

    name: str
    #: "moica" certificates are anchors for citizen certificates; "root" only checks them
    role: Literal["root", "moica"]
    generation: str
    #: SHA-256 of the DER encoding, lower-case hex
    sha256: str
    #: the certificate's own subjectKeyIdentifier
    key_id: bytes
    url: str
    #: other file names the certificate is published under (official download names)
    aliases: tuple[str, ...] = ()


#: moica.md §6.1 (verified with openssl) and /work/shared/trust/README.md.
PINNED: tuple[PinnedCertificate, ...] = (
    PinnedCertificate(
        name="GRCA-G2",
        role="root",
        generation="G2",
        sha256="70b922bfda0e3f4a342e4ee22d579ae598d071cc5ec9c30f123680340388aea5",
        key_id=bytes.fromhex("D5671DE09C7A2C9CCBC598E71D07262A86EC74CD"),
        url="https://grca.nat.gov.tw/repository/Certs/GRCA2.cer",
        aliases=("GRCA2",),
    ),
    PinnedCertificate(
        name="MOICA-G2",
        role="moica",
        generation="G2",
        sha256="c4c462de463f856804dc898338d2cecb55fba74155851599d8fb7d70218fd1be",
        key_id=bytes.fromhex("FA9B3467090A9822F762488B8226A645C5C322A4"),
        url="https://moica.nat.gov.tw/repository/Certs/MOICA2.cer",
        aliases=("MOICA2",),
    ),
    PinnedCertificate(
        name="GRCA-G3",
        role="root",
        generation="G3",
        sha256="57df6f20e04c588e85f35be8832f5d4e78958336ae3b18fb7c9bae0dfead4044",
        key_id=bytes.fromhex("3A908EE741471973DC9CBDA37ED83D3E83091F03"),
        url="https://grca.nat.gov.tw/repository/Certs/GRCAG3.crt",
        aliases=("GRCAG3",),
    ),
    PinnedCertificate(
        name="MOICA-G3",
        role="moica",
        generation="G3",
        sha256="ed793fd0d50a2a398049d598982cf01e75f873b532066caec238f800a06ca9da",
        key_id=bytes.fromhex("4720A3B1264BCD6D48ACF2640886972C7454115F"),
        url="https://moica.nat.gov.tw/repository/Certs/MOICA-G3.cer",
    ),
)

_PIN_BY_SHA256: Mapping[str, PinnedCertificate] = MappingProxyType({p.sha256: p for p in PINNED})
_PIN_BY_NAME: Mapping[str, PinnedCertificate] = MappingProxyType({p.name: p for p in PINNED})
_PIN_BY_FILE_STEM: Mapping[str, PinnedCertificate] = MappingProxyType(
    {stem.upper(): p for p in PINNED for stem in (p.name, *p.aliases)}
)

#: where each pinned certificate is officially published, by name
OFFICIAL_URLS: Mapping[str, str] = MappingProxyType({p.name: p.url for p in PINNED})

#: takes a URL, returns the body; raises OSError (or ValueError) when it cannot
Opener = Callable[[str], bytes]


@dataclass(frozen=True)
class TrustAnchor:
    """A CA that may issue citizen certificates cardd accepts."""

    certificate: x509.Certificate
    #: "MOICA-G2", "MOICA-G3", or "test-<fingerprint prefix>" for unpinned anchors
    name: str
    #: "G2", "G3" or "test"
    generation: str
    key_id: bytes
    fingerprint: str


class TrustStore:
    """The MOICA anchors a verification may chain to, selected by key identifier.

    :param anchors: CA certificates that issue citizen certificates (MOICA G2/G3 in production).
    :param pinned: ``True`` for production: every anchor must be a pinned MOICA certificate and
        every root a pinned GRCA certificate. ``False`` only for test PKIs, built explicitly.
    :param roots: optional CA certificates used once, here, to check the anchors' signatures
        (GRCA G2/G3). They never anchor a citizen certificate.
    :raises TrustAnchorInvalid: an anchor is unpinned (when pinned), not a CA, has no key
        identifier, fails its root's signature, or there is no anchor at all.
    """

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        pinned: bool,
        *,
        roots: Sequence[x509.Certificate] = (),
    ) -> None:
        self.pinned = bool(pinned)
        self.roots: tuple[x509.Certificate, ...] = tuple(roots)
        by_key_id: dict[bytes, TrustAnchor] = {}
        for cert in anchors:
            anchor = _make_anchor(cert, pinned=self.pinned)
            known = by_key_id.get(anchor.key_id)
            if known is not None:
                if known.fingerprint == anchor.fingerprint:
                    continue  # the same file twice (e.g. PEM and DER copies)
                # Two certificates for one key would make the AKI lookup ambiguous.
                raise TrustAnchorInvalid(
                    f"anchors {known.name} and {anchor.name} share the key identifier "
                    f"{anchor.key_id.hex()}; keep only one of them"
                )
            by_key_id[anchor.key_id] = anchor
        if not by_key_id:
            raise TrustAnchorInvalid("no MOICA trust anchor is configured")
        for root in self.roots:
            _check_root(root, pinned=self.pinned)
        for anchor in by_key_id.values():
            _check_anchor_against_roots(anchor, self.roots)
        self._by_key_id: Mapping[bytes, TrustAnchor] = MappingProxyType(by_key_id)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> TrustStore:
        """A pinned store from the certificate files in ``directory`` (PEM or DER).

        Every ``*.pem``/``*.crt``/``*.cer``/``*.der`` file must hold pinned certificates; a file
        named like a pinned certificate (``MOICA-G2.pem``, ``MOICA2.cer``, …) must hold exactly
        that one, so a swapped file is refused even when the certificate in it is pinned too.
        """
        anchors: list[x509.Certificate] = []
        roots: list[x509.Certificate] = []
        for path, cert in load_certificate_directory(directory):
            fingerprint = fingerprint_sha256(cert)
            pin = _PIN_BY_SHA256.get(fingerprint)
            if pin is None:
                raise TrustAnchorInvalid(
                    f"{path}: certificate SHA-256 {fingerprint} is not a pinned MOICA or GRCA "
                    "certificate; fetch the official files again (`cardd moica fetch-anchors`)"
                )
            named = _PIN_BY_FILE_STEM.get(path.stem.upper())
            if named is not None and named is not pin:
                raise TrustAnchorInvalid(
                    f"{path}: the file is named for {named.name} but holds {pin.name}"
                )
            (anchors if pin.role == "moica" else roots).append(cert)
        if not anchors:
            raise TrustAnchorInvalid(f"{directory}: no MOICA G2 or G3 certificate found")
        return cls(anchors, pinned=True, roots=roots)

    @property
    def anchors(self) -> tuple[TrustAnchor, ...]:
        return tuple(self._by_key_id.values())

    def anchor_for_key_id(self, key_id: bytes | None) -> TrustAnchor | None:
        """The anchor whose subjectKeyIdentifier is ``key_id`` (a leaf's AKI), if any."""
        if not key_id:
            return None
        return self._by_key_id.get(bytes(key_id))

    def issuer_of(self, cert: x509.Certificate) -> TrustAnchor | None:
        """The anchor that issued ``cert`` by key identifier. Never matches on the DN alone."""
        return self.anchor_for_key_id(authority_key_id(cert))

    def __repr__(self) -> str:
        names = ", ".join(a.name for a in self._by_key_id.values())
        return f"TrustStore([{names}], pinned={self.pinned})"


# -- certificate helpers --------------------------------------------------------------------


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lower-case hex (what the pins hold)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def subject_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return aki.key_identifier


def pinned_certificate(cert: x509.Certificate) -> PinnedCertificate | None:
    """The pin entry ``cert`` matches byte for byte, if any."""
    return _PIN_BY_SHA256.get(fingerprint_sha256(cert))


def pinned_generation_for_key_id(key_id: bytes | None) -> str | None:
    """The generation ("G2"/"G3") of the pinned MOICA CA whose key identifier is ``key_id``."""
    if not key_id:
        return None
    for pin in PINNED:
        if pin.role == "moica" and pin.key_id == key_id:
            return pin.generation
    return None


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in ``data``: PEM (one or more blocks) or a single DER certificate.

    :raises ValueError: the data holds no parseable certificate.
    """
    if b"-----BEGIN" in data:
        certs = x509.load_pem_x509_certificates(data)
    else:
        certs = [x509.load_der_x509_certificate(data)]
    for cert in certs:
        cert.extensions  # noqa: B018 - extensions parse lazily; fail here, not mid-verification
    return certs


def load_certificate_directory(
    directory: str | os.PathLike[str],
) -> list[tuple[Path, x509.Certificate]]:
    """(path, certificate) for every certificate file in ``directory``, sorted by file name.

    :raises TrustAnchorInvalid: the directory is missing, or a file cannot be read or parsed.
    """
    base = Path(directory)
    if not base.is_dir():
        raise TrustAnchorInvalid(f"{base}: trust anchor directory does not exist")
    found: list[tuple[Path, x509.Certificate]] = []
    for path in sorted(base.iterdir()):
        if path.suffix.lower() not in CERTIFICATE_SUFFIXES or not path.is_file():
            continue
        try:
            if path.stat().st_size > MAX_CERTIFICATE_FILE_BYTES:
                raise TrustAnchorInvalid(f"{path}: too large for a CA certificate")
            data = path.read_bytes()
        except OSError as exc:
            raise TrustAnchorInvalid(f"{path}: cannot read: {exc.strerror or exc}") from exc
        try:
            certs = load_certificates(data)
        except ValueError as exc:
            raise TrustAnchorInvalid(f"{path}: not a certificate ({exc})") from exc
        found.extend((path, cert) for cert in certs)
    return found


# -- fetching the official files --------------------------------------------------------------


def download(
    url: str,
    *,
    timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
    max_bytes: int = MAX_CERTIFICATE_FILE_BYTES,
) -> bytes:
    """GET ``url`` (http or https only) and return at most ``max_bytes`` of body.

    Plain http is acceptable because nothing downloaded is trusted until its fingerprint
    matches a pin; the GRCA repository itself publishes some files over http.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"refusing to fetch {url!r}: only http and https URLs")
    request = urllib.request.Request(url, headers={"User-Agent": f"cardd/{__version__}"})  # noqa: S310 - scheme checked above
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
        data: bytes = response.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{url}: more than {max_bytes} bytes; not a CA certificate")
    return data


def fetch_anchors(
    dest_dir: str | os.PathLike[str],
    urls: Mapping[str, str] = OFFICIAL_URLS,
    opener: Opener = download,
) -> list[Path]:
    """Download pinned certificates and write each as ``<name>.pem`` into ``dest_dir``.

    All downloads are checked before anything is written, so a refused file leaves the
    directory as it was. Existing files are replaced atomically.

    :param urls: pinned certificate name (``"MOICA-G3"``, …) → URL; defaults to the official
        locations. Tests point this at a local server.
    :param opener: fetches one URL; :func:`download` by default.
    :raises TrustAnchorInvalid: an unknown name, a failed download, or a file whose
        fingerprint is not the one pinned for that name.
    """
    fetched: list[tuple[PinnedCertificate, x509.Certificate]] = []
    for name, url in urls.items():
        pin = _PIN_BY_NAME.get(name)
        if pin is None:
            raise TrustAnchorInvalid(
                f"{name!r} is not a pinned certificate (known: {', '.join(_PIN_BY_NAME)})"
            )
        try:
            data = opener(url)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise TrustAnchorInvalid(f"{name}: download from {url} failed: {exc}") from exc
        try:
            certs = load_certificates(data)
        except ValueError as exc:
            raise TrustAnchorInvalid(f"{name}: {url} did not serve a certificate") from exc
        if len(certs) != 1:
            raise TrustAnchorInvalid(f"{name}: {url} served {len(certs)} certificates, not 1")
        fingerprint = fingerprint_sha256(certs[0])
        if fingerprint != pin.sha256:
            raise TrustAnchorInvalid(
                f"{name}: {url} served a certificate with SHA-256 {fingerprint}; "
                f"the pinned one is {pin.sha256}. Nothing was written."
            )
        fetched.append((pin, certs[0]))
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written = [
        _write_atomically(dest / f"{pin.name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        for pin, cert in fetched
    ]
    logger.info("fetched trust anchors %s into %s", ", ".join(p.name for p, _ in fetched), dest)
    return written


# -- internals ------------------------------------------------------------------------------


def _make_anchor(cert: x509.Certificate, *, pinned: bool) -> TrustAnchor:
    fingerprint = fingerprint_sha256(cert)
    pin = _PIN_BY_SHA256.get(fingerprint)
    if pinned:
        if pin is None:
            raise TrustAnchorInvalid(
                f"anchor with SHA-256 {fingerprint} is not a pinned MOICA certificate"
            )
        if pin.role != "moica":
            # Anchoring at GRCA would accept every GPKI CA's certificates (moica.md §6.2).
            raise TrustAnchorInvalid(
                f"{pin.name} is a root; only MOICA G2/G3 may anchor citizen certificates"
            )
    _require_ca(cert, "anchor")
    key_id = subject_key_id(cert)
    if not key_id:
        raise TrustAnchorInvalid(
            f"anchor {fingerprint[:16]}… has no subjectKeyIdentifier; issuers are selected by it"
        )
    if pin is not None and pin.role == "moica":
        return TrustAnchor(cert, pin.name, pin.generation, key_id, fingerprint)
    return TrustAnchor(cert, f"test-{fingerprint[:12]}", TEST_GENERATION, key_id, fingerprint)


def _check_root(root: x509.Certificate, *, pinned: bool) -> None:
    if pinned:
        pin = pinned_certificate(root)
        if pin is None or pin.role != "root":
            raise TrustAnchorInvalid(
                f"root with SHA-256 {fingerprint_sha256(root)} is not a pinned GRCA certificate"
            )
    _require_ca(root, "root")


def _check_anchor_against_roots(anchor: TrustAnchor, roots: Iterable[x509.Certificate]) -> None:
    """When the anchor's issuer is among ``roots``, its signature must verify under it.

    A missing root is not an error: the pin already fixes the anchor's bytes, and GRCA is only
    a second check (moica.md §1).
    """
    issuer_key_id = authority_key_id(anchor.certificate)
    for root in roots:
        if issuer_key_id is None or subject_key_id(root) != issuer_key_id:
            continue
        try:
            anchor.certificate.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise TrustAnchorInvalid(
                f"anchor {anchor.name} is not validly signed by its root ({exc or 'bad signature'})"
            ) from exc


def _require_ca(cert: x509.Certificate, what: str) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise TrustAnchorInvalid(f"{what} {fingerprint_sha256(cert)[:16]}… is not a CA certificate")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise TrustAnchorInvalid(
            f"{what} {fingerprint_sha256(cert)[:16]}… may not sign certificates (no keyCertSign)"
        )


def _write_atomically(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # public certificates; the daemon user must read them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
