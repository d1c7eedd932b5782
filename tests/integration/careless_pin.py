# SPDX-License-Identifier: Apache-2.0
"""A careless caller that logs the PIN while cardd's PKCS#11 login runs; run as its own process.

    python -m tests.integration.careless_pin MODULE CERT_DER_FILE   (PIN in $CARELESS_PIN)

A process of its own because a PKCS#11 module reads its configuration (SOFTHSM2_CONF) once,
at C_Initialize: an earlier test in the same pytest process that used another SoftHSM2 token
directory would leave this one's token invisible. Log lines (JSON) go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def main() -> None:
    from cardd.log import setup_logging
    from cardd.moica.pkcs11 import Pkcs11Signer

    module, cert_file = sys.argv[1], Path(sys.argv[2])
    pin = os.environ.pop("CARELESS_PIN")
    setup_logging("debug", traffic=True, stream=sys.stderr, fmt="json")
    careless = logging.getLogger("careless.caller")

    class LeakPinDuringLogin(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if "C_Login on slot" in record.getMessage():
                careless.warning("the PIN is %s, again: pin=%s", pin, pin)
            return True

    logging.getLogger("cardd.moica.pkcs11").addFilter(LeakPinDuringLogin())
    Pkcs11Signer(module).sign(cert_file.read_bytes(), b"data", lambda: bytearray(pin.encode()))


if __name__ == "__main__":
    main()
