# SPDX-License-Identifier: Apache-2.0
"""Revocation for MOICA citizen certificates: OCSP first, then the complete CRL (moica.md §1, §6.3).

Order: an OCSP answer (GOOD or REVOKED) wins; otherwise the CRL held for the issuer answers,
"crl" while it is fresh, "crl-cached" past nextUpdate within the store's grace period (a REVOKED
listing at any age); otherwise UNKNOWN with method "none" and both reasons in ``detail``.

The policy (``require`` / ``allow-offline``) is the verifier's: this class only reports. Nothing
here downloads a CRL; :class:`~cardd.moica.crl.CrlStore` refreshes in the background, so a check
costs at most one OCSP round trip (``OcspConfig.timeout``) plus a ~2 µs index lookup. That round
trip blocks: async callers run :meth:`Revocation.check` in a worker thread.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from cryptography import x509

from cardd.moica.crl import CrlStore
from cardd.moica.ocsp import OcspClient
from cardd.moica.types import RevocationResult, RevocationStatus


class Revocation:
    """A :class:`~cardd.moica.types.RevocationChecker` over an OCSP client and a CRL store.

    :param ocsp: None to skip OCSP (e.g. an offline kiosk).
    :param crls: None to rely on OCSP alone.
    """

    def __init__(self, ocsp: OcspClient | None, crls: CrlStore | None) -> None:
        self.ocsp = ocsp
        self.crls = crls

    def check(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, now: dt.datetime
    ) -> RevocationResult:
        reasons = []
        if self.ocsp is not None:
            result = self.ocsp.check(cert, issuer, now=now)  # never raises
            if result.status is not RevocationStatus.UNKNOWN:
                return result
            reasons.append(f"ocsp: {result.detail}")
        if self.crls is not None:
            # Not guarded: a CRL store that raises is a bug, and the verifier fails closed on it
            # under both policies, where an UNKNOWN would pass under allow-offline.
            result = self.crls.check(cert, issuer, now=now)
            if result.status is not RevocationStatus.UNKNOWN:
                # Keep why OCSP was not used: it explains a "crl-cached" answer in the logs.
                return replace(result, detail="; ".join([result.detail, *reasons]))
            reasons.append(f"crl: {result.detail}")
        if not reasons:
            reasons.append("no OCSP client and no CRL store configured")
        return RevocationResult(RevocationStatus.UNKNOWN, "none", "; ".join(reasons))
