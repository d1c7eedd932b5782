# SPDX-License-Identifier: Apache-2.0
"""``python -m cardd.demo.softhsm DIR FIXTURES``: the demo card's key in a SoftHSM2 token.

scripts/demo.sh inserts the virtual citizen certificate card of tests/fixtures/moica into a
vpcd reader; signing goes through a PKCS#11 module, so the demo needs a token holding that
card's signing key and certificate (the fixture's ``sign_key.p8`` and ``sign.der``; the
encryption key is not in the fixtures and is not needed to sign). Prints the ``SOFTHSM2_CONF``
path to export for ``cardd serve``. Test material only: the demo PIN is
:data:`cardd.sim.softhsm.DEFAULT_PIN`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_private_key
from cryptography.x509.oid import NameOID

from cardd.sim.softhsm import DEFAULT_PIN, provision_token, write_config
from cardd.sim.testpki import CitizenIdentity, IssuedCertificate

LABEL = "cardd-demo"


def provision(directory: Path, fixtures: Path) -> Path:
    """The token in ``directory`` (made once; later runs reuse it). Returns SOFTHSM2_CONF."""
    conf = write_config(directory)
    if any((directory / "tokens").iterdir()):
        return conf
    cert = x509.load_der_x509_certificate((fixtures / "sign.der").read_bytes())
    key = load_der_private_key((fixtures / "sign_key.p8").read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SystemExit("the fixture's signing key is not RSA")
    signing = IssuedCertificate(cert, key)
    name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    serial = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value
    identity = CitizenIdentity(str(name), str(serial), "", signing, signing)
    provision_token(identity, directory, label=LABEL, pin=DEFAULT_PIN, include_encryption=False)
    return conf


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m cardd.demo.softhsm DIR FIXTURES_DIR")
    print(provision(Path(sys.argv[1]), Path(sys.argv[2])))
