# SPDX-License-Identifier: Apache-2.0
"""Citizen certificate card end to end: read → authenticate → verify.

Real components: `cardd serve` on the private pcscd with a virtual MOICA gen1 card, SoftHSM2 as
the card's PKCS#11 module (provisioned from the same test identity, so read and sign agree), and
the local OCSP/CRL server of the test PKI. The relying party's side is `cardd.moica.verify`.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from cardd.errors import CertRevoked, IdMismatch, SignatureInvalid
from cardd.moica.crl import CrlSource, CrlStore
from cardd.moica.ocsp import OcspClient
from cardd.moica.revocation import Revocation
from cardd.moica.trust import TrustStore
from cardd.moica.types import RevocationPolicy
from cardd.moica.verify import NonceStore, verify_token
from cardd.sim.cards.moica import MoicaGen1Card
from cardd.sim.revocation_server import RevocationServer
from cardd.sim.softhsm import provision_token, softhsm_unusable
from cardd.sim.testpki import PkiEndpoints, make_test_pki
from tests.helpers import READER0, wait_card

pytestmark = pytest.mark.pcsc

ORIGIN = "https://library.example.tw"
PIN = "246810"
ID_NUMBER = "A123456789"  # last four 6789, on the certificate's SDA attribute


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory, pcscd):
    reason = softhsm_unusable()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("moica")
    port = free_port()
    pki = make_test_pki(endpoints=PkiEndpoints.at(f"http://127.0.0.1:{port}"))
    server = RevocationServer(pki, port=port)
    server.start()
    identity = pki.issue_citizen("王小明", "1234567890123456", ID_NUMBER[-4:])
    token = provision_token(identity, tmp / "hsm", label="citizen", pin=PIN)
    config = tmp / "cardd.toml"
    api_port = free_port()
    config.write_text(
        f'[api]\nport = {api_port}\n'
        f'[api.origins."{ORIGIN}"]\nscopes = ["readers", "moica"]\n'
        f'[moica]\npkcs11_module = "{token.module_path}"\n'
    )
    log = tmp / "cardd.log"
    env = dict(os.environ, CARDD_STATE_DIR=str(tmp / "state"), **token.env())
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cardd.cli.main", "-vv", "--config", str(config), "serve"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", api_port), timeout=0.2):
                break
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
    bearer = (tmp / "state" / "token").read_text().strip()
    trust = TrustStore([pki.moica.certificate], False)
    revocation = Revocation(
        OcspClient(), CrlStore([CrlSource(pki.moica.certificate, pki.endpoints.moica_crl)], tmp / "rp")
    )
    yield {
        "pki": pki, "server": server, "identity": identity, "url": f"http://127.0.0.1:{api_port}",
        "auth": {"Authorization": f"Bearer {bearer}"}, "trust": trust, "revocation": revocation,
        "log": log, "hsm_env": token.env(), "module": token.module_path,
        "card": MoicaGen1Card("TP03000000000001", [
            pki.moica.der(), identity.encryption.der(), identity.signing.der()]),
    }
    proc.terminate()
    proc.wait(10)
    server.stop()


@pytest.fixture
def card_in_reader(world, vreaders):
    vreaders[0].insert(world["card"])
    wait_card(READER0, present=True)
    time.sleep(0.5)  # the daemon's own watcher sees it independently


async def post(world, path, body, headers):
    async with aiohttp.ClientSession() as s:
        async with s.post(world["url"] + path, json=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)


def verify(world, token, nonce, **kw):
    return verify_token(json.dumps(token), expected_origin=kw.pop("origin", ORIGIN), nonce=nonce,
                        trust=world["trust"], revocation=world["revocation"],
                        policy=RevocationPolicy.REQUIRE, **kw)


async def test_read_authenticate_verify(world, card_in_reader):
    status, card = await post(world, "/v1/moica/read", {}, {"Origin": ORIGIN})
    assert status == 200, card
    assert (card["cardType"], card["cardNumber"]) == ("moica_gen1", "TP03000000000001")
    assert (card["holderName"], card["idLast4"]) == ("王小明", "6789")
    assert {c["usage"] for c in card["certificates"]} == {"sign", "encrypt"}

    nonce = NonceStore().issue()
    status, token = await post(world, "/v1/moica/authenticate",
                               {"nonce": nonce, "origin": ORIGIN, "pin": PIN}, world["auth"])
    assert status == 200, token
    assert token["format"] == "cardd-moica:1" and token["algorithm"] == "RS256"
    assert base64.b64decode(token["unverifiedCertificate"]) == world["identity"].signing.der()

    result = verify(world, token, nonce, id_number=ID_NUMBER)
    assert (result.holder_name, result.id_last4) == ("王小明", "6789")
    assert result.revocation_method == "ocsp"
    with pytest.raises(IdMismatch):
        verify(world, token, nonce, id_number="B120000008")
    with pytest.raises(SignatureInvalid):  # another site's origin
        verify(world, token, nonce, origin="https://evil.example.tw")


async def test_wrong_pin_and_missing_pin_entry(world, card_in_reader):
    nonce = NonceStore().issue()
    status, body = await post(world, "/v1/moica/authenticate",
                              {"nonce": nonce, "origin": ORIGIN, "pin": "999999"}, world["auth"])
    assert status == 422 and body["error"]["code"] == "pin_incorrect"
    assert "triesLeft" in body["error"]
    # a browser page may not send the PIN (allow_page_pin is off) ...
    status, body = await post(world, "/v1/moica/authenticate", {"nonce": nonce, "pin": PIN}, {"Origin": ORIGIN})
    assert status == 400 and body["error"]["code"] == "invalid_input"
    # ... and without a PIN pad or the PIN page there is no way to ask for it
    status, body = await post(world, "/v1/moica/authenticate", {"nonce": nonce}, {"Origin": ORIGIN})
    assert status == 501 and body["error"]["code"] == "pin_entry_unavailable"
    status, body = await post(world, "/v1/moica/authenticate", {"nonce": "short"}, {"Origin": ORIGIN})
    assert status == 400 and body["error"]["code"] == "bad_nonce"


async def test_revoked_by_ocsp_and_by_crl(world, card_in_reader):
    nonce = NonceStore().issue()
    status, token = await post(world, "/v1/moica/authenticate",
                               {"nonce": nonce, "origin": ORIGIN, "pin": PIN}, world["auth"])
    assert status == 200
    world["server"].revoke(world["identity"].signing.certificate.serial_number)
    with pytest.raises(CertRevoked):
        verify(world, token, nonce)
    crl_only = Revocation(None, CrlStore([CrlSource(world["pki"].moica.certificate,
                                                    world["pki"].endpoints.moica_crl)],
                                         world["log"].parent / "crl-only"))
    assert all(o.ok for o in crl_only.crls.refresh(force=True))  # what the refresher thread does
    with pytest.raises(CertRevoked):
        verify_token(json.dumps(token), expected_origin=ORIGIN, nonce=nonce, trust=world["trust"],
                     revocation=crl_only, policy=RevocationPolicy.REQUIRE)


def test_no_pin_in_the_daemon_log(world):
    text = world["log"].read_text(errors="replace")
    assert "moica" in text.lower()  # the log is the daemon's and has content
    assert PIN not in text and "999999" not in text


async def test_gen2_card_is_read_through_the_pkcs11_module(world, vreaders):
    """Gen2 speaks protected APDUs cardd does not implement: its certificates come from the module."""
    from cardd.sim.cards.uid import UidCard

    gen2_atr = bytes.fromhex("3BD8960081B1FE451F074348544750 4B494ADD".replace(" ", ""))
    vreaders[0].insert(UidCard(bytes.fromhex("04112233"), atr=gen2_atr))
    wait_card(READER0, present=True)
    time.sleep(0.5)
    status, card = await post(world, "/v1/moica/read", {}, {"Origin": ORIGIN})
    assert status == 200, card
    assert (card["cardType"], card["cardNumber"], card["holderName"]) == ("moica_gen2", None, "王小明")
    assert {c["usage"] for c in card["certificates"]} == {"sign", "encrypt"}


def test_verify_token_cli_with_the_real_anchors(world, tmp_path):
    """The CLI verifies against pinned anchors only: a test-PKI token is an untrusted chain there."""
    import shutil

    from cardd.cli.main import EXIT_CODES  # noqa: F401 - the CLI module imports cleanly

    shared = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "trust"
    if not shared.is_dir():
        pytest.skip("../shared/trust not present")
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    for pem in shared.glob("*.pem"):
        shutil.copy(pem, trust_dir)  # a temporary copy for this test, never in the repo
    config = tmp_path / "cardd.toml"
    config.write_text(f'[moica]\ntrust_dir = "{trust_dir}"\nrevocation = "allow-offline"\nocsp = false\n')
    identity = world["identity"]
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from cardd.moica.token import make_token, signed_data

    nonce = NonceStore().issue()
    sig = identity.signing.private_key.sign(signed_data(ORIGIN, nonce), padding.PKCS1v15(), hashes.SHA256())
    token_file = tmp_path / "token.json"
    token_file.write_text(make_token(identity.signing.der(), sig, "cardd/test"))
    env = dict(os.environ, CARDD_STATE_DIR=str(tmp_path / "state"))
    out = subprocess.run([sys.executable, "-m", "cardd.cli.main", "--config", str(config), "moica",
                          "verify-token", str(token_file), "--origin", ORIGIN, "--nonce", nonce],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1 and "untrusted_chain" in out.stderr and "Traceback" not in out.stderr
    show = subprocess.run([sys.executable, "-m", "cardd.cli.main", "--config", str(config), "trust", "show"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert show.returncode == 0 and "G2" in show.stdout and "G3" in show.stdout, show.stderr


def test_moica_cli_read_authenticate_and_check(world, card_in_reader, tmp_path):
    """`cardd moica read|authenticate|check` as a person runs them (the PIN typed on stdin)."""
    shared = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "trust"
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    import shutil

    for pem in shared.glob("*.pem"):
        shutil.copy(pem, trust_dir)
    config = tmp_path / "cardd.toml"
    config.write_text(f'[moica]\npkcs11_module = "{world["module"]}"\ntrust_dir = "{trust_dir}"\n'
                      'revocation = "allow-offline"\nocsp = false\n')
    env = dict(os.environ, CARDD_STATE_DIR=str(tmp_path / "state"), **world["hsm_env"])

    def cardd(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "cardd.cli.main", "--config", str(config), *args],
                              input=stdin, capture_output=True, text=True, env=env, timeout=90)

    read = cardd("moica", "read", "-r", READER0, "--json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["holderName"] == "王小明"
    nonce = NonceStore().issue()
    auth = cardd("moica", "authenticate", "-r", READER0, "--origin", ORIGIN, "--nonce", nonce, stdin=PIN + "\n")
    assert auth.returncode == 0, auth.stderr
    token = json.loads(auth.stdout)
    # (an earlier test revoked this certificate in the shared test PKI: check the signature only)
    result = verify_token(json.dumps(token), expected_origin=ORIGIN, nonce=nonce, trust=world["trust"],
                          revocation=None, policy=RevocationPolicy.ALLOW_OFFLINE)
    assert result.holder_name == "王小明"
    assert PIN not in auth.stdout + auth.stderr
    wrong = cardd("moica", "authenticate", "-r", READER0, "--origin", ORIGIN, "--nonce", nonce, stdin="000000\n")
    assert wrong.returncode == 1 and "pin_incorrect" in wrong.stderr and "Traceback" not in wrong.stderr
    # check signs and verifies against this station's pinned MOICA anchors: the test PKI's card
    # is (rightly) not trusted there
    check = cardd("moica", "check", "-r", READER0, stdin=PIN + "\n")
    assert check.returncode == 1 and "untrusted_chain" in check.stderr, check.stderr
