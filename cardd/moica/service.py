# SPDX-License-Identifier: Apache-2.0
"""Citizen certificate cards for the daemon and the CLI: read, authenticate, verify.

Reading runs on the reader's worker thread (APDUs for gen1; the PKCS#11 module for cards cardd
cannot read itself). Signing goes through the PKCS#11 module only, for the card whose signing
certificate was just read from the chosen reader. Verification is the relying party's library
(cardd.moica.verify) with this station's trust anchors and revocation sources.
"""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cardd.config import Config
from cardd.errors import CardNotSupported, ConfigError, NoCard, Pkcs11ModuleMissing
from cardd.readers.identify import CardIdentity, CardType
from cardd.readers.transport import SmartCardConnection

if TYPE_CHECKING:
    # cardd.moica.profile pulls in cryptography and asn1crypto (~0.1 s): imported at the first
    # card read, not when `cardd serve` starts (bench_startup.py; tests/unit/test_lazy_imports.py)
    from cardd.moica.profile import CertificateProfile

logger = logging.getLogger(__name__)

MOICA_TYPES = (CardType.MOICA_GEN1, CardType.MOICA_GEN2, CardType.MOICA_CONTACTLESS)


@dataclass(frozen=True)
class MoicaCertificate:
    der: bytes
    profile: CertificateProfile

    def to_dict(self) -> dict[str, Any]:
        p = self.profile
        return {
            "certificate": base64.b64encode(self.der).decode("ascii"),
            "usage": p.usage,
            "notBefore": p.not_before.isoformat(),
            "notAfter": p.not_after.isoformat(),
            "serial": p.certificate_serial,
            "generation": p.generation,
        }


@dataclass(frozen=True)
class MoicaCard:
    card_type: CardType
    #: the 16-character number printed on the card (gen1 only; None when read through PKCS#11)
    card_number: str | None
    certificates: tuple[MoicaCertificate, ...]

    @property
    def signing(self) -> MoicaCertificate:
        for cert in self.certificates:
            if cert.profile.usage == "sign":
                return cert
        raise CardNotSupported("the card holds no signing certificate")

    def to_dict(self) -> dict[str, Any]:
        try:
            holder = self.signing.profile
        except CardNotSupported:
            holder = None
        return {
            "cardType": self.card_type.value,
            "generation": {"moica_gen1": "gen1", "moica_gen2": "gen2"}.get(
                self.card_type.value, "contactless"
            ),
            "cardNumber": self.card_number,
            "holderName": holder.common_name if holder else None,
            "idLast4": holder.id_last4 if holder else None,
            "certificates": [
                c.to_dict() for c in self.certificates if c.profile.usage in ("sign", "encrypt")
            ],
        }


class MoicaService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._signer: Any = None
        self._trust: Any = None
        self._revocation: Any = None
        self._lock = threading.Lock()

    # -- parts, built on first use ----------------------------------------------------------

    @property
    def signer(self) -> Any:
        from cardd.moica.pkcs11 import Pkcs11Signer

        with self._lock:
            if self._signer is None:
                module = self.config.moica.pkcs11_module
                if not module:
                    raise Pkcs11ModuleMissing(
                        "no PKCS#11 module configured ([moica] pkcs11_module)"
                    )
                self._signer = Pkcs11Signer(module)
            return self._signer

    @property
    def trust(self) -> Any:
        from cardd.moica.trust import TrustStore

        with self._lock:
            if self._trust is None:
                directory = self.config.moica.trust_dir or (self.config.state_dir / "trust")
                if not directory.is_dir():
                    raise ConfigError(
                        f"no trust anchors in {directory}: run `cardd trust fetch` or set [moica] trust_dir"
                    )
                self._trust = TrustStore.from_directory(directory)
            return self._trust

    def set_trust(self, trust: Any) -> None:
        """Tests and embedders: a trust store built from explicit (test) anchors."""
        with self._lock:
            self._trust = trust

    @property
    def revocation(self) -> Any:
        from cardd.moica.crl import CrlStore
        from cardd.moica.ocsp import OcspClient
        from cardd.moica.revocation import Revocation

        trust = self.trust
        with self._lock:
            if self._revocation is None:
                import datetime as dt

                from cardd.moica.crl import (
                    MOICA_G2_CRL_URL,
                    MOICA_G3_CRL_URL,
                    CrlSource,
                    CrlStoreConfig,
                )

                cfg = self.config.moica
                urls = {"G2": MOICA_G2_CRL_URL, "G3": MOICA_G3_CRL_URL}
                # Each anchor's complete CRL: the real MOICA URLs for the pinned G2/G3; a test
                # anchor names its own in its certificates (set_revocation in tests).
                sources = [
                    CrlSource(a.certificate, urls[a.generation])
                    for a in trust.anchors
                    if a.generation in urls
                ]
                crls = CrlStore(
                    sources,
                    self.config.state_dir,
                    CrlStoreConfig(grace=dt.timedelta(hours=cfg.crl_grace_hours)),
                )
                crls.start()  # background refresh before each nextUpdate (and a first download)
                self._revocation = Revocation(OcspClient() if cfg.ocsp else None, crls)
            return self._revocation

    def set_revocation(self, revocation: Any) -> None:
        with self._lock:
            self._revocation = revocation

    # -- operations ---------------------------------------------------------------------------

    def read(self, connection: SmartCardConnection, identity: CardIdentity | None) -> MoicaCard:
        """Public data without a PIN (runs on the reader's worker)."""
        if identity is None or identity.card_type not in MOICA_TYPES:
            raise CardNotSupported("this is not a citizen certificate card")
        trust = self._trust  # only when already loaded: reading must not need anchors
        if identity.card_type is CardType.MOICA_GEN1:
            from cardd.moica.gen1 import MoicaGen1Session

            data = MoicaGen1Session(connection).read_public_data()
            ders, number = list(data.certificates), data.card_number
        else:
            # gen2 and contactless speak protected APDUs cardd does not implement: the vendor's
            # module reads the certificates (moica.md §3.4, §4).
            ders = [der for _info, der in self.signer.certificates()]
            number = None
            if not ders:
                raise NoCard("the PKCS#11 module sees no citizen certificate card")
        from cardd.moica.profile import parse_profile

        certs = tuple(MoicaCertificate(der, parse_profile(der, trust=trust)) for der in ders)
        return MoicaCard(identity.card_type, number, certs)

    def authenticate(
        self,
        card: MoicaCard,
        origin: str,
        nonce: str,
        pin_source: Any,
        *,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        from cardd.moica.sign import authenticate

        return authenticate(
            self.signer, card.signing.der, origin, nonce, pin_source, timeout=timeout, cancel=cancel
        )

    def verify(
        self,
        token: str | bytes,
        *,
        origin: str,
        nonce: str,
        id_number: str | None = None,
        now: datetime | None = None,
    ) -> Any:
        from cardd.moica.types import RevocationPolicy
        from cardd.moica.verify import verify_token

        return verify_token(
            token,
            expected_origin=origin,
            nonce=nonce,
            trust=self.trust,
            revocation=self.revocation,
            policy=RevocationPolicy(self.config.moica.revocation),
            now=now,
            id_number=id_number,
        )
