# SPDX-License-Identifier: Apache-2.0
"""`cardd demo-site`: the demo library registration site (cardd.demo.site) on another origin."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo-site",
        help="serve the demo library registration site that uses cardd from another origin",
        description="A demo registration page (Traditional Chinese) on http://127.0.0.1:PORT that "
        "authenticates with the citizen certificate card through cardd's PIN page and binds an "
        "EasyCard/iPass. Allowlist its origin in cardd's configuration with the scopes "
        '"moica" and "rfid:read".',
    )
    p.add_argument("--port", type=int, default=8080, help="port of the site (default 8080)")
    p.add_argument(
        "--cardd",
        default="http://127.0.0.1:7420",
        metavar="URL",
        help="cardd's address as the page calls it (default http://127.0.0.1:7420)",
    )
    p.add_argument(
        "--origin",
        default="",
        metavar="ORIGIN",
        help="the site's origin as browsers send it (default http://127.0.0.1:PORT)",
    )
    p.add_argument(
        "--trust-cert",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a MOICA(-like) CA certificate the site trusts, DER or PEM (repeatable); "
        "the demo uses the simulated card's test CA, tests/fixtures/moica/moica_ca.der",
    )
    p.add_argument(
        "--crl-url",
        action="append",
        default=[],
        metavar="URL",
        help="the CA's CRL: check revocation (OCSP, then CRL) and require an answer",
    )
    p.add_argument(
        "--chip-form",
        default="decLE",
        choices=["decLE", "decBE", "hex", "hexReversed"],
        help="the chip-number form the library system stores (default decLE, 內碼)",
    )
    p.add_argument("--db", default=":memory:", help="SQLite file for accounts (default: memory)")


def run(_config: Any, args: argparse.Namespace) -> int:
    from cardd.demo.site import DemoSiteConfig
    from cardd.demo.site import run as run_site
    from cardd.rfid.uid import UidForm

    run_site(
        DemoSiteConfig(
            port=args.port,
            cardd_url=args.cardd.rstrip("/"),
            origin=args.origin,
            trust_certs=tuple(args.trust_cert),
            crl_urls=tuple(args.crl_url),
            chip_form=UidForm(args.chip_form),
            db=args.db,
        )
    )
    return 0
