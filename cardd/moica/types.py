# SPDX-License-Identifier: Apache-2.0
"""Types shared by the citizen-certificate modules: revocation results and the checker contract."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from cryptography import x509


class RevocationStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class RevocationPolicy(StrEnum):
    #: unknown revocation status fails verification (`revocation_unknown`); the default
    REQUIRE = "require"
    #: kiosks: a cached CRL within its grace period, or nothing, may let a token through
    ALLOW_OFFLINE = "allow-offline"


@dataclass(frozen=True)
class RevocationResult:
    status: RevocationStatus
    #: "ocsp", "crl", "crl-cached" (offline, within the grace period) or "none"
    method: str
    detail: str = ""
    #: when the answer was produced (OCSP producedAt / CRL thisUpdate), if known
    produced_at: datetime | None = None
    revoked_at: datetime | None = None


class RevocationChecker(Protocol):
    """Checks one end-entity certificate against its issuer at time ``now`` (UTC, aware)."""

    def check(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, now: datetime
    ) -> RevocationResult: ...
