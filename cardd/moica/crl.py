# SPDX-License-Identifier: Apache-2.0
"""Complete CRLs for the MOICA CAs: download, verify, index, persist, look up (moica.md §6.3).

MOICA's G2 complete CRL lists ~412,000 serials in ~20 MB of DER. ``cryptography`` parses it in
0.1 s, but ``tbs_certlist_bytes`` (hence ``is_signature_valid``) re-encodes it in ~1 s and a
lookup is a linear scan (~0.1 s). So ``cryptography`` reads only the header (issuer, times,
extensions, signature parameters) and this module does the rest:

* **Walker.** A minimal DER reader finds the signed TBSCertList (verified with the issuer's key
  directly, through a memoryview) and the ``revokedCertificates`` range. An inlined loop then
  records, per entry, only offsets into the DER (serial magnitude, its length and CRC, the date
  digits) in ``array``s: no Python object per entry survives. It indexes ``bytes``, not a
  ``memoryview``: in CPython 3.11 ``bytes[i]``/``bytes[a:b]`` are ~2.5× faster. Entry
  extensions are skipped; dates are not parsed (that was 60 % of the walk).
* **Index.** Each serial becomes a fixed-width big-endian key (width = the longest magnitude).
  A counting sort groups the keys by ``crc32(magnitude) & mask`` (~4 per bucket) into one
  ``bytes`` blob, ``offsets[b]`` being where bucket *b* starts. A lookup is one ``to_bytes``,
  one CRC and one aligned ``bytes.find`` in the bucket: ~2 µs whatever the serials look like (a
  prefix table degenerates on sequential serials; bisect through a Python sequence costs ~20
  calls). The revocation dates sit in a parallel blob of 12 ASCII digits (``YYMMDDHHMMSS``),
  decoded on a hit. About 29 bytes per entry, ~0.6× the DER. Serials that do not fit (negative,
  over 32 bytes, dates after 2049) go to a small dict.
* **Persistence.** The index, not the CRL, goes to ``<state_dir>/crl/<issuer key id hex>.idx``
  (tmp + fsync + rename) with a SHA-256 trailer; a damaged file is refused, deleted and rebuilt
  by the next download. It is loaded at start without network access, and trusted like the
  token file next to it (the checksum catches damage, not an attacker who can write there).

Policy: complete CRLs only. Delta CRLs, indirect CRLs, CRLs scoped by an IssuingDistributionPoint
(CA-only, attribute-only, some reasons), unknown critical extensions, MD5/SHA-1 signatures and
CRLs without nextUpdate are refused. The issuer must match by DER name and key identifier (all
MOICA generations share one DN, moica.md §6.1). A serial listed in a CRL we hold is REVOKED even
past the grace period: revocation is final (RFC 5280 §3.3), and UNKNOWN could let a revoked card
through an ``allow-offline`` kiosk. Only a CRL newer than the one held replaces it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from cardd.moica.ocsp import (
    DerError,
    children,
    http_request,
    key_id,
    read_tlv,
    subject_der,
)
from cardd.moica.types import RevocationResult, RevocationStatus

logger = logging.getLogger(__name__)

#: MOICA complete CRLs (moica.md §6.3); a G3 ``…/CRL3/complete.crl`` variant answered 404.
MOICA_G2_CRL_URL = "https://moica.nat.gov.tw/repository/MOICA/CRL2/complete.crl"
MOICA_G3_CRL_URL = "https://crl-moica.moi.gov.tw/crl/MOICA-G3-complete.crl"

_MAX_WIDTH = 32  # serial magnitudes up to 256 bits go in the blob; RFC 5280 allows 20 octets
_MAGIC, _FILE_VERSION = b"CARDDCRL", 1


class CrlError(DerError):
    """A CRL (or an index file) that must not be used; the message says why."""


# -- the DER walker -------------------------------------------------------------------------


def _layout(der: bytes) -> tuple[memoryview, bytes, tuple[int, int]]:
    """(signed TBSCertList, its raw issuer Name, the revokedCertificates value range)."""
    tag, s, e = read_tlv(der, 0, len(der))
    top = children(der, s, e)
    if tag != 0x30 or e != len(der) or len(top) != 3 or top[0][0] != 0x30:
        raise CrlError("not a CertificateList")
    (_, ts, tvs, te), (_, as_, _, ae) = top[0], top[1]
    fields = children(der, tvs, te)
    i = 1 if fields[0][0] == 0x02 else 0  # version (v2) is optional
    if der[fields[i][1] : fields[i][3]] != der[as_:ae]:
        raise CrlError("signature algorithm differs inside and outside the signed part")
    issuer = der[fields[i + 1][1] : fields[i + 1][3]]
    for tag, _, vs, ve in fields[i + 3 :]:  # after thisUpdate: [nextUpdate] [revoked] [0] exts
        if tag == 0x30:
            return memoryview(der)[ts:te], issuer, (vs, ve)  # a view: no 20 MB copy
    return memoryview(der)[ts:te], issuer, (0, 0)


def _parse_time(tag: int, raw: bytes) -> dt.datetime:
    """UTCTime or GeneralizedTime (``…Z``, RFC 5280 §4.1.2.5)."""
    text = raw.decode("ascii", "replace")
    if tag == 0x17 and len(text) == 13:
        text = ("20" if text[:2] < "50" else "19") + text
    if tag not in (0x17, 0x18) or len(text) != 15 or not text.endswith("Z"):
        raise CrlError(f"bad time {raw!r}")
    try:
        return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise CrlError(f"bad time {raw!r}") from None


def _utc_digits(digits: bytes) -> dt.datetime | None:
    """``YYMMDDHHMMSS`` (UTCTime without the Z) as a datetime; None if it is no valid time."""
    try:
        return _parse_time(0x17, digits + b"Z")  # ~15 µs, paid on a hit only
    except CrlError:
        return None


@dataclass(frozen=True)
class Entries:
    """What :func:`walk_revoked` found: per entry, where its serial magnitude and date are."""

    starts: array[int]  # offset of the serial's first non-zero byte
    lengths: array[int]  # its length (0 for serial 0)
    crcs: array[int]  # crc32 of the magnitude: the bucket, once the bucket count is known
    dates: array[int]  # offset of 12 ASCII digits YYMMDDHHMMSS (UTCTime without the Z)
    odd: dict[int, dt.datetime | None]  # negative or > 32-byte serials, or dates past 2049


def walk_revoked(der: bytes, start: int, end: int) -> Entries:
    """Walk revokedCertificates ``der[start:end]``: offsets only, no object per entry.

    The hot loop of ingest, hence inlined DER reading. Its checks keep a malformed entry from
    being read as something else; entry extensions are skipped. Dates are not parsed here (that
    was 60 % of the walk): the digits are copied into the index and decoded on a hit.
    """
    starts, lengths, crcs, dates = array("I"), array("B"), array("I"), array("I")
    add_s, add_l, add_c, add_d = starts.append, lengths.append, crcs.append, dates.append
    odd: dict[int, dt.datetime | None] = {}
    crc = zlib.crc32
    i = start
    try:
        while i < end:
            n = der[i + 1]
            if n < 0x80:
                j = i + 2
            else:
                j = i + 2 + (n & 0x7F)
                n = int.from_bytes(der[i + 2 : j], "big")
            nxt = j + n
            sl = der[j + 1]
            s1 = j + 2 + sl
            tt, tl = der[s1], der[s1 + 1]
            if der[i] != 0x30 or der[j] != 0x02 or sl >= 0x80 or s1 + 2 + tl > nxt or nxt > end:
                raise CrlError(f"malformed revokedCertificates entry at offset {i}")
            k = j + 2
            if der[k] & 0x80:  # negative: RFC 5280 forbids it, some CAs did it anyway
                odd[int.from_bytes(der[k:s1], "big", signed=True)] = _parse_time(
                    tt, der[s1 + 2 : s1 + 2 + tl]
                )
                i = nxt
                continue
            while k < s1 and der[k] == 0:
                k += 1
            if tt == 0x17 and tl == 13 and der[s1 + 14] == 0x5A and s1 - k <= _MAX_WIDTH:
                add_d(s1 + 2)
            elif (
                tt == 0x18
                and tl == 15
                and der[s1 + 16] == 0x5A
                and s1 - k <= _MAX_WIDTH
                and (
                    der[s1 + 2 : s1 + 4] in (b"19", b"20")
                    and b"1950" <= der[s1 + 2 : s1 + 6] < b"2050"
                )
            ):
                add_d(s1 + 4)  # GeneralizedTime within UTCTime's range: the same 12 digits
            else:
                odd[int.from_bytes(der[k:s1], "big")] = _parse_time(tt, der[s1 + 2 : s1 + 2 + tl])
                i = nxt
                continue
            add_s(k)
            add_l(s1 - k)
            add_c(crc(der[k:s1]))
            i = nxt
    except IndexError:
        raise CrlError(f"malformed revokedCertificates entry at offset {i}") from None
    return Entries(starts, lengths, crcs, dates, odd)


# -- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    this_update: dt.datetime
    next_update: dt.datetime
    crl_number: int | None
    revoked: tuple[int, int]


def verify_crl(der: bytes, issuer: x509.Certificate) -> _Header:
    """The CRL is a complete CRL by ``issuer`` (DER name, key identifier) with its signature."""
    try:
        crl = x509.load_der_x509_crl(der)
        exts = crl.extensions
    except ValueError as e:
        raise CrlError(f"not a CRL: {e}") from None
    try:
        tbs, issuer_der, revoked = _layout(der)
    except (DerError, IndexError) as e:
        raise CrlError(f"not a CRL: {e}") from None
    if issuer_der != subject_der(issuer):
        raise CrlError("CRL issuer name differs from the issuer certificate's subject")
    number = None
    for ext in exts:
        v = ext.value
        if isinstance(v, x509.AuthorityKeyIdentifier) and v.key_identifier != key_id(issuer):
            raise CrlError("CRL authorityKeyIdentifier differs from the issuer's key identifier")
        if isinstance(v, x509.CRLNumber):
            number = v.crl_number
        elif isinstance(v, x509.DeltaCRLIndicator):
            raise CrlError("delta CRL: only complete CRLs are supported")
        elif isinstance(v, x509.IssuingDistributionPoint) and (
            v.only_contains_ca_certs
            or v.only_contains_attribute_certs
            or v.only_some_reasons
            or v.indirect_crl
        ):
            raise CrlError("partial or indirect CRL (issuingDistributionPoint)")
        elif ext.critical and isinstance(v, x509.UnrecognizedExtension):
            raise CrlError(f"unknown critical CRL extension {ext.oid.dotted_string}")
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.crl_sign:
            raise CrlError("issuer certificate lacks the cRLSign key usage")
    except x509.ExtensionNotFound:
        pass
    if crl.next_update_utc is None:
        raise CrlError("CRL has no nextUpdate (RFC 5280 §5.1.2.5 requires one)")
    try:
        algorithm, params = crl.signature_hash_algorithm, crl.signature_algorithm_parameters
    except (UnsupportedAlgorithm, ValueError) as e:
        raise CrlError(f"CRL signature algorithm not supported: {e}") from None
    if isinstance(algorithm, hashes.SHA1 | hashes.MD5):
        raise CrlError("CRL signed with MD5 or SHA-1")
    key = issuer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(crl.signature, tbs, params, algorithm)  # type: ignore[arg-type]
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(crl.signature, tbs, params)  # type: ignore[arg-type]
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(crl.signature, tbs)
        else:
            raise CrlError("the issuer's key type cannot check this CRL's signature")
    except InvalidSignature:
        raise CrlError("CRL signature does not verify with the issuer's key") from None
    except (TypeError, ValueError) as e:
        raise CrlError(f"CRL signature cannot be checked: {e}") from None
    return _Header(crl.last_update_utc, crl.next_update_utc, number, revoked)


# -- the index ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrlInfo:
    """What is known about the CRL an index was built from."""

    issuer_key_id: bytes
    this_update: dt.datetime
    next_update: dt.datetime
    crl_number: int | None
    url: str
    sha256: str
    size: int


@dataclass(frozen=True, eq=False)
class CrlIndex:
    """Revoked serials of one CRL; never modified once built."""

    info: CrlInfo
    width: int
    mask: int
    blob: bytes  # keys of `width` bytes (big-endian magnitudes), grouped by bucket
    offsets: array[int]  # mask + 2 entries: bucket b holds keys offsets[b] .. offsets[b+1]-1
    dates: bytes  # 12 ASCII digits YYMMDDHHMMSS per key, same order
    odd: dict[int, dt.datetime | None] = field(default_factory=dict)

    @classmethod
    def build(cls, info: CrlInfo, der: bytes, entries: Entries) -> CrlIndex:
        """Place each key in its bucket (a counting sort: no object per entry survives)."""
        n = len(entries.starts)
        width = max(1, max(entries.lengths, default=1))
        buckets = 1
        while buckets * 4 < n:  # ~4 keys per bucket: a short find, 1 offset per 4 keys
            buckets <<= 1
        mask = buckets - 1
        counts = array("I", bytes(4 * buckets))
        for c in entries.crcs:
            counts[c & mask] += 1
        offsets = array("I", accumulate(counts, initial=0))
        cursor = offsets.tolist()
        blob, dates = bytearray(n * width), bytearray(n * 12)
        for c, s, length, d in zip(
            entries.crcs, entries.starts, entries.lengths, entries.dates, strict=True
        ):
            b = c & mask
            p = cursor[b]
            cursor[b] = p + 1
            q = (p + 1) * width
            blob[q - length : q] = der[s : s + length]  # right-aligned: zero-padded on the left
            dates[p * 12 : p * 12 + 12] = der[d : d + 12]
        if not dates.isdigit() and n:
            raise CrlError("a revocationDate is not a valid time")
        return cls(info, width, mask, bytes(blob), offsets, bytes(dates), dict(entries.odd))

    def _position(self, serial: int) -> int:
        w = self.width
        if serial < 0 or serial.bit_length() > 8 * w:
            return -1
        key = serial.to_bytes(w, "big")
        b = zlib.crc32(key.lstrip(b"\x00")) & self.mask  # the walker hashed the magnitude
        lo, hi = self.offsets[b] * w, self.offsets[b + 1] * w
        pos = self.blob.find(key, lo, hi)
        while pos >= 0:
            if (pos - lo) % w == 0:  # a match straddling two keys is no match
                return pos // w
            pos = self.blob.find(key, pos + 1, hi)
        return -1

    def __contains__(self, serial: int) -> bool:
        return self._position(serial) >= 0 or serial in self.odd

    def lookup(self, serial: int) -> tuple[bool, dt.datetime | None]:
        """(listed, revocation date); the date is None if it does not decode."""
        pos = self._position(serial)
        if pos >= 0:
            return True, _utc_digits(self.dates[pos * 12 : pos * 12 + 12])
        if serial in self.odd:
            return True, self.odd[serial]
        return False, None

    def __len__(self) -> int:
        return len(self.dates) // 12 + len(self.odd)

    def items(self) -> Iterator[tuple[int, dt.datetime | None]]:
        """Every (serial, revocation date), in no particular order."""
        w = self.width
        for i in range(len(self.dates) // 12):
            serial = int.from_bytes(self.blob[i * w : (i + 1) * w], "big")
            yield serial, _utc_digits(self.dates[i * 12 : i * 12 + 12])
        yield from self.odd.items()

    @property
    def nbytes(self) -> int:
        """Memory held by the index (the odd dict estimated at 100 bytes an entry)."""
        parts = (self.blob, self.offsets, self.dates)
        return sum(map(sys.getsizeof, parts)) + 100 * len(self.odd)

    # File: MAGIC, u16 version, u32 header length, JSON header, blob, offsets, dates, SHA-256.

    def to_file_bytes(self) -> bytes:
        info = {**self.info.__dict__, "issuer_key_id": self.info.issuer_key_id.hex()}
        header = json.dumps(
            {
                "info": info,
                "width": self.width,
                "mask": self.mask,
                "count": len(self.dates) // 12,
                "odd": [(k, v and v.isoformat()) for k, v in self.odd.items()],
                "byteorder": sys.byteorder,
            },
            default=dt.datetime.isoformat,
        ).encode()
        sections = (self.blob, self.offsets.tobytes(), self.dates)
        body = b"".join((_MAGIC, struct.pack("<HI", _FILE_VERSION, len(header)), header, *sections))
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_file_bytes(cls, data: bytes) -> CrlIndex:
        if data[:8] != _MAGIC or hashlib.sha256(data[:-32]).digest() != data[-32:]:
            raise CrlError("not a cardd CRL index file, or a damaged one (checksum)")
        version, hlen = struct.unpack_from("<HI", data, 8)
        if version != _FILE_VERSION:
            raise CrlError(f"CRL index file version {version} is not {_FILE_VERSION}")
        try:
            h = json.loads(data[14 : 14 + hlen])
            width, mask, count = int(h["width"]), int(h["mask"]), int(h["count"])
            i = h["info"]
            info = CrlInfo(
                bytes.fromhex(i["issuer_key_id"]),
                dt.datetime.fromisoformat(i["this_update"]),
                dt.datetime.fromisoformat(i["next_update"]),
                None if i["crl_number"] is None else int(i["crl_number"]),
                str(i["url"]),
                str(i["sha256"]),
                int(i["size"]),
            )
            odd = {int(k): v and dt.datetime.fromisoformat(v) for k, v in h["odd"]}
            swap = h["byteorder"] != sys.byteorder
        except (ValueError, KeyError, TypeError) as e:
            raise CrlError(f"CRL index header unreadable: {e}") from None
        p, q = 14 + hlen, 14 + hlen + width * count
        r = q + 4 * (mask + 2)
        if r + 12 * count != len(data) - 32 or mask & (mask + 1) or width < 1:
            raise CrlError("CRL index file sections do not add up")
        mv = memoryview(data)
        offsets = array("I")
        offsets.frombytes(mv[q:r])
        if swap:
            offsets.byteswap()
        if offsets[0] != 0 or offsets[-1] != count:
            raise CrlError("CRL index offsets are inconsistent")
        return cls(info, width, mask, bytes(mv[p:q]), offsets, bytes(mv[r:-32]), odd)


def ingest(der: bytes, issuer: x509.Certificate, *, url: str = "") -> CrlIndex:
    """Verify ``der`` as a complete CRL by ``issuer`` and index it (signature first, then walk)."""
    der = bytes(der)  # the walker indexes bytes (see the module docstring)
    header = verify_crl(der, issuer)
    entries = walk_revoked(der, *header.revoked)
    info = CrlInfo(
        issuer_key_id=key_id(issuer),
        this_update=header.this_update,
        next_update=header.next_update,
        crl_number=header.crl_number,
        url=url,
        sha256=hashlib.sha256(der).hexdigest(),
        size=len(der),
    )
    return CrlIndex.build(info, der, entries)


# -- the store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrlSource:
    """Where to get the complete CRL of one issuing CA."""

    issuer: x509.Certificate
    url: str

    @property
    def key_id(self) -> bytes:
        return key_id(self.issuer)


def moica_sources(
    g2: x509.Certificate | None = None,
    g3: x509.Certificate | None = None,
    *,
    g2_url: str = MOICA_G2_CRL_URL,
    g3_url: str = MOICA_G3_CRL_URL,
) -> tuple[CrlSource, ...]:
    """The MOICA G2/G3 complete CRLs for the given CA certificates (moica.md §6.3)."""
    pairs = ((g2, g2_url), (g3, g3_url))
    return tuple(CrlSource(cert, url) for cert, url in pairs if cert is not None)


@dataclass(frozen=True)
class CrlStoreConfig:
    #: how long past nextUpdate a held CRL still answers, as "crl-cached" (offline kiosks)
    grace: dt.timedelta = dt.timedelta(hours=24)
    #: tolerated clock difference: a CRL whose thisUpdate is further ahead is not used
    skew: dt.timedelta = dt.timedelta(minutes=15)
    #: download again this often even if nextUpdate is far (moica-revocation-smt polls every 6 h)
    poll_interval: dt.timedelta = dt.timedelta(hours=6)
    #: ... and at the latest this long before nextUpdate
    refresh_margin: dt.timedelta = dt.timedelta(hours=1)
    #: first retry after a failed download; doubles per failure up to ``poll_interval``
    retry_min: dt.timedelta = dt.timedelta(minutes=5)
    #: seconds per download (20 MB over a slow school line)
    timeout: float = 120.0
    max_bytes: int = 64 * 1024 * 1024
    #: how often the background refresher wakes up to ask ``refresh_due``
    wake_interval: float = 60.0


#: ``fetch(url, timeout, max_bytes) -> body``; raises OSError (or CrlError) on failure.
Fetcher = Callable[[str, float, int], bytes]


def http_fetch(url: str, timeout: float, max_bytes: int) -> bytes:
    """The default :data:`Fetcher`: a plain GET."""
    return http_request(
        url, accept="application/pkix-crl, */*", timeout=timeout, max_bytes=max_bytes
    )


@dataclass(frozen=True)
class RefreshOutcome:
    url: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class _SourceState:
    checked_at: dt.datetime | None = None  # last time the CRL was fetched and found good
    failed_at: dt.datetime | None = None
    failures: int = 0
    error: str = ""


class CrlStore:
    """Complete CRLs per issuer, refreshed in the background, answering from memory only.

    :param sources: one per issuing CA, matched to certificates by the issuer's key identifier.
    :param state_dir: the index files go to ``state_dir/crl``; they are loaded here, at once.
    :param fetch: the downloader (tests may pass a fake); the default is :func:`http_fetch`.
    :param clock: "now" for the background refresher.
    """

    def __init__(
        self,
        sources: Sequence[CrlSource],
        state_dir: Path,
        config: CrlStoreConfig | None = None,
        *,
        fetch: Fetcher | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.config = config or CrlStoreConfig()
        self._sources = {s.key_id: s for s in sources}
        self._dir = Path(state_dir) / "crl"
        self._fetch = fetch or http_fetch
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._indexes: dict[bytes, CrlIndex] = {}
        self._state: dict[bytes, _SourceState] = {k: _SourceState() for k in self._sources}
        self._lock = threading.RLock()  # one refresh/install at a time; lookups never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for kid in self._sources:
            self._load(kid)

    # -- answering ----------------------------------------------------------------------

    def index(self, issuer_key_id: bytes) -> CrlIndex | None:
        return self._indexes.get(issuer_key_id)

    def check(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, now: dt.datetime
    ) -> RevocationResult:
        """Status of ``cert`` from the CRL held for ``issuer``; never touches the network."""
        kid = key_id(issuer)
        idx = self._indexes.get(kid)
        if idx is None:
            st = self._state.get(kid)
            why = f" (last download: {st.error})" if st and st.error else ""
            return _unknown(f"no_crl: no CRL is held for this issuer{why}")
        info = idx.info
        listed, revoked_at = idx.lookup(cert.serial_number)
        fresh = now <= info.next_update
        method = "crl" if fresh else "crl-cached"
        age = "" if fresh else f" (CRL expired at {info.next_update:%Y-%m-%d %H:%M}Z)"
        if listed:  # whatever the CRL's age: revocation is final
            return RevocationResult(
                RevocationStatus.REVOKED,
                method,
                f"listed in CRL {info.crl_number}{age}",
                produced_at=info.this_update,
                revoked_at=revoked_at,
            )
        if info.this_update > now + self.config.skew:
            return _unknown(f"crl_not_yet_valid: thisUpdate {info.this_update} is ahead of {now}")
        if fresh or now <= info.next_update + self.config.grace:
            return RevocationResult(
                RevocationStatus.GOOD,
                method,
                f"not listed in CRL {info.crl_number}{age}",
                produced_at=info.this_update,
            )
        return _unknown(
            f"crl_expired: nextUpdate {info.next_update} passed more than the grace period "
            f"({self.config.grace}) ago"
        )

    # -- refreshing ---------------------------------------------------------------------

    def refresh_due(self, now: dt.datetime) -> bool:
        return any(self._due(kid, now) for kid in self._sources)

    def _due(self, kid: bytes, now: dt.datetime) -> bool:
        cfg, st, idx = self.config, self._state[kid], self._indexes.get(kid)
        if st.failures and st.failed_at is not None:
            backoff = min(cfg.retry_min * 2 ** (st.failures - 1), cfg.poll_interval)
            if now < st.failed_at + backoff:
                return False
        if idx is None or st.checked_at is None:
            return True
        if now >= idx.info.next_update - cfg.refresh_margin:
            # Near or past nextUpdate: ask every retry_min, not on every wake-up (20 MB each)
            return now >= st.checked_at + cfg.retry_min
        return now >= st.checked_at + cfg.poll_interval

    def refresh(
        self, now: dt.datetime | None = None, *, force: bool = False
    ) -> list[RefreshOutcome]:
        """Download and install every CRL that is due (all of them with ``force``)."""
        now = now or self._clock()
        with self._lock:
            return [
                self._refresh_one(kid, now) for kid in self._sources if force or self._due(kid, now)
            ]

    def _refresh_one(self, kid: bytes, now: dt.datetime) -> RefreshOutcome:
        src = self._sources[kid]
        try:
            idx = self.install(
                src, self._fetch(src.url, self.config.timeout, self.config.max_bytes), now=now
            )
        except (CrlError, OSError, ValueError) as e:  # urllib's errors are OSErrors
            st = self._state[kid]
            self._state[kid] = replace(st, failed_at=now, failures=st.failures + 1, error=str(e))
            logger.warning("CRL %s not refreshed: %s", src.url, e)
            return RefreshOutcome(src.url, False, str(e))
        return RefreshOutcome(src.url, True, f"CRL {idx.info.crl_number}, {len(idx)} entries")

    def install(self, source: CrlSource, der: bytes, *, now: dt.datetime) -> CrlIndex:
        """Verify, index and persist ``der`` for ``source``; refuse one older than what we hold."""
        with self._lock:
            return self._install(source, der, now)

    def _install(self, source: CrlSource, der: bytes, now: dt.datetime) -> CrlIndex:
        kid = source.key_id
        current = self._indexes.get(kid)
        if current is not None and current.info.sha256 == hashlib.sha256(der).hexdigest():
            idx = current  # unchanged since the last download: nothing to rebuild
        else:
            idx = ingest(der, source.issuer, url=source.url)
            if current is not None:
                old, new = current.info, idx.info
                if (
                    new.crl_number is not None
                    and old.crl_number is not None
                    and new.crl_number < old.crl_number
                ) or new.this_update < old.this_update:
                    raise CrlError(
                        f"CRL {new.crl_number} ({new.this_update}) is older than the held "
                        f"CRL {old.crl_number} ({old.this_update}); refused"
                    )
            self._persist(kid, idx)
            self._indexes[kid] = idx  # one reference swap: lookups see old or new, never half
            logger.info(
                "CRL %s installed: number %s, %d entries, nextUpdate %s",
                source.url,
                idx.info.crl_number,
                len(idx),
                idx.info.next_update,
            )
        self._state[kid] = _SourceState(checked_at=now)
        return idx

    def start(self) -> None:
        """Refresh in a background thread (daemon): ``refresh()`` whenever ``refresh_due``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cardd-crl-refresher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                now = self._clock()
                if self.refresh_due(now):
                    self.refresh(now)
            except Exception:  # keep refreshing whatever one round did
                logger.exception("CRL refresher round failed")
            self._stop.wait(self.config.wake_interval)

    # -- persistence --------------------------------------------------------------------

    def _path(self, kid: bytes) -> Path:
        return self._dir / f"{kid.hex()}.idx"

    def _load(self, kid: bytes) -> None:
        path = self._path(kid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            logger.warning("CRL index %s unreadable: %s", path, e)
            return
        try:
            idx = CrlIndex.from_file_bytes(data)
            if idx.info.issuer_key_id != kid:
                raise CrlError("CRL index belongs to another issuer")
        except CrlError as e:
            # Refused and removed: the next refresh downloads the CRL and rebuilds it.
            logger.warning("CRL index %s refused (%s); it will be rebuilt", path, e)
            path.unlink(missing_ok=True)
            return
        mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        self._indexes[kid] = idx
        self._state[kid] = _SourceState(checked_at=mtime)

    def _persist(self, kid: bytes, idx: CrlIndex) -> None:
        try:
            write_atomic(self._path(kid), idx.to_file_bytes())
        except OSError as e:  # still usable from memory; the next start downloads again
            logger.warning("CRL index for %s not saved: %s", idx.info.url, e)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself must reach the disk
    finally:
        os.close(dfd)


def _unknown(detail: str) -> RevocationResult:
    return RevocationResult(RevocationStatus.UNKNOWN, "crl", detail)
