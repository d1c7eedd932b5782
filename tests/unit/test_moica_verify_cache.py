# SPDX-License-Identifier: Apache-2.0
"""The certificate-level cache in verify_token never lets time, revocation or signature slide."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from cardd.errors import CertExpired, CertRevoked, SignatureInvalid, UntrustedChain
from cardd.moica.token import make_token, signed_data
from cardd.moica.trust import TrustStore
from cardd.moica.types import RevocationPolicy, RevocationResult, RevocationStatus
from cardd.moica.verify import NonceStore, verify_token
from cardd.sim.testpki import make_test_pki

ORIGIN = "https://library.example.tw"


class Switchable:
    def __init__(self) -> None:
        self.status = RevocationStatus.GOOD

    def check(self, cert, issuer, *, now):
        return RevocationResult(self.status, "crl")


@pytest.fixture(scope="module")
def chain():
    pki = make_test_pki()
    return pki, pki.issue_citizen("王小明", "1234567890123456", "6789")


def token_for(who, nonce):
    sig = who.signing.private_key.sign(signed_data(ORIGIN, nonce), padding.PKCS1v15(), hashes.SHA256())
    return make_token(who.signing.der(), sig, "cardd/test")


def test_cached_certificate_is_still_judged_at_each_moment(chain):
    pki, who = chain
    trust, checker = TrustStore([pki.moica.certificate], False), Switchable()
    nonce = NonceStore().issue()
    token = token_for(who, nonce)
    now = dt.datetime.now(dt.UTC)
    kw = dict(expected_origin=ORIGIN, nonce=nonce, trust=trust, revocation=checker,
              policy=RevocationPolicy.REQUIRE)
    assert verify_token(token, now=now, **kw).holder_name == "王小明"  # now cached
    with pytest.raises(CertExpired):
        verify_token(token, now=who.signing.certificate.not_valid_after_utc + dt.timedelta(days=1), **kw)
    checker.status = RevocationStatus.REVOKED
    with pytest.raises(CertRevoked):
        verify_token(token, now=now, **kw)
    checker.status = RevocationStatus.GOOD
    with pytest.raises(SignatureInvalid):
        verify_token(token, now=now, **{**kw, "nonce": NonceStore().issue()})


def test_cache_is_per_trust_store(chain):
    pki, who = chain
    nonce = NonceStore().issue()
    token = token_for(who, nonce)
    kw = dict(expected_origin=ORIGIN, nonce=nonce, revocation=Switchable(), policy=RevocationPolicy.REQUIRE)
    verify_token(token, trust=TrustStore([pki.moica.certificate], False), **kw)
    other = make_test_pki()  # another CA: the cached answer must not carry over
    with pytest.raises(UntrustedChain):
        verify_token(token, trust=TrustStore([other.moica.certificate], False), **kw)
