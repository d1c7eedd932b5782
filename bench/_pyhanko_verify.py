# SPDX-License-Identifier: Apache-2.0
"""Run by bench_verify.py with a venv holding pyhanko-certvalidator (it needs a newer
cryptography than cardd pins, so it lives in its own venv). Prints seconds per validation."""

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from pyhanko_certvalidator import CertificateValidator, ValidationContext


async def main() -> None:
    d = Path(sys.argv[1])
    n = int(sys.argv[2])
    ca = asn1_x509.Certificate.load((d / "ca.der").read_bytes())
    leaf_der = (d / "leaf.der").read_bytes()
    leaf = asn1_x509.Certificate.load(leaf_der)
    crl = (d / "crl.der").read_bytes()
    sig = (d / "sig.bin").read_bytes()
    data = (d / "data.bin").read_bytes()
    moment = datetime.fromtimestamp(float((d / "now.txt").read_text()), UTC)
    # pyhanko cannot take the CRL issuer's trust from a trust root that is itself the CRL issuer
    # ("chain of trust for the CRL issuer could not be determined"), so it gets the real shape:
    # the GRCA-like root as anchor, the MOICA-like CA as intermediate, and both CRLs.
    root = asn1_x509.Certificate.load((d / "root.der").read_bytes())
    root_crl = (d / "root_crl.der").read_bytes()
    ctx = ValidationContext(trust_roots=[root], other_certs=[ca], crls=[crl, root_crl], revocation_mode="hard-fail",
                            moment=moment, allow_fetching=False)
    pub = x509.load_der_x509_certificate(leaf_der).public_key()

    async def once() -> None:
        v = CertificateValidator(leaf, validation_context=ctx)
        await v.async_validate_usage({"digital_signature"})
        pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())  # the token's own signature

    for _ in range(20):
        await once()  # warm caches
    t0 = time.perf_counter()
    for _ in range(n):
        await once()
    print((time.perf_counter() - t0) / n)


asyncio.run(main())
