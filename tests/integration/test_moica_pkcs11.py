# SPDX-License-Identifier: Apache-2.0
"""PKCS#11 signing against real SoftHSM2 tokens provisioned from the test PKI.

SoftHSM2 reads ``SOFTHSM2_CONF`` at C_Initialize only, and python-pkcs11 initialises a module once
per process. So every token of this module is provisioned first, into one directory, the variable
is set, and each signer calls ``reload()`` (in case something earlier in this pytest process
initialised SoftHSM2 under another configuration).

C_Login is counted by a spy wrapped around python-pkcs11's own objects (library → slot → token;
``Token.open`` with a PIN is python-pkcs11's C_OpenSession + C_Login). PIN states SoftHSM2 cannot
produce (lockout, final try, vendor codes, PIN pad, removal) are in
tests/unit/test_moica_pkcs11_states.py.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pkcs11 import Attribute, ObjectClass

from cardd import __version__
from cardd.errors import (
    CardError,
    CardRemoved,
    InvalidInput,
    OperationCancelled,
    OperationTimeout,
    PinIncorrect,
    Pkcs11ModuleMissing,
)
from cardd.moica.pkcs11 import Pkcs11Signer, load_python_pkcs11
from cardd.moica.sign import authenticate
from cardd.sim.softhsm import (
    ENCRYPTION_KEY_ID,
    SIGNING_KEY_ID,
    SOFTHSM_MODULE,
    SoftHsmToken,
    provision_token,
    softhsm_unusable,
)
from cardd.sim.testpki import CitizenIdentity, make_test_pki

# 8 digits each, so a chance match with a slot id or serial in the logs is negligible.
PIN = "73194625"
WRONG_PIN = "58204713"
OTHER_PIN = "24681357"
ORIGIN = "https://library.example.tw"
NONCE = base64.b64encode(bytes(range(32))).decode()


@dataclass(frozen=True)
class Hsm:
    alice: SoftHsmToken
    carol: SoftHsmToken
    #: issued by the same CA but on no token: "the card was swapped"
    outsider: CitizenIdentity


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    reason = softhsm_unusable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"SoftHSM2 tests cannot run: {reason}")
        pytest.skip(reason)
    pki = make_test_pki()
    alice = pki.issue_citizen("王小明", "1000000000000001", "6789")
    carol = pki.issue_citizen("林美麗", "1000000000000002", "1234")
    outsider = pki.issue_citizen("陳大文", "1000000000000003", "4321")
    directory = tmp_path_factory.mktemp("softhsm")
    alice_token = provision_token(alice, directory, label="cardd-alice", pin=PIN)
    carol_token = provision_token(carol, directory, label="cardd-carol", pin=OTHER_PIN)
    saved = os.environ.get("SOFTHSM2_CONF")
    os.environ.update(alice_token.env())  # both tokens share it
    try:
        yield Hsm(alice_token, carol_token, outsider)
    finally:
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved


# -- a spy at the python-pkcs11 boundary ----------------------------------------------------


class _Proxy:
    def __init__(self, inner: Any, spy: LoginSpy) -> None:
        self._inner = inner
        self._spy = spy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _LibraryProxy(_Proxy):
    def get_slots(self, token_present: bool = False) -> list[Any]:
        return [
            _SlotProxy(s, self._spy) for s in self._inner.get_slots(token_present=token_present)
        ]


class _SlotProxy(_Proxy):
    def get_token(self) -> Any:
        return _TokenProxy(self._inner.get_token(), self._spy)


class _TokenProxy(_Proxy):
    def open(self, rw: bool = False, user_pin: Any = None) -> Any:
        if user_pin is not None:
            self._spy.logins.append(self._inner.label)
        return self._inner.open(rw=rw, user_pin=user_pin)


class LoginSpy:
    """Counts C_Login per token label on the real python-pkcs11 objects."""

    def __init__(self) -> None:
        self.logins: list[str] = []

    def loader(self, path: str) -> Any:
        return _LibraryProxy(load_python_pkcs11(path), self)


@pytest.fixture
def spy() -> LoginSpy:
    return LoginSpy()


@pytest.fixture
def signer(hsm: Hsm, spy: LoginSpy) -> Pkcs11Signer:
    s = Pkcs11Signer(hsm.alice.module_path, loader=spy.loader)
    s.reload()  # pick up this module's SOFTHSM2_CONF whatever ran before
    return s


class CountingPin:
    def __init__(self, pin: str) -> None:
        self.pin = pin
        self.buffers: list[bytearray] = []

    def __call__(self) -> bytearray:
        self.buffers.append(bytearray(self.pin, "ascii"))
        return self.buffers[-1]


def verify_rs256(cert_der_identity: CitizenIdentity, data: bytes, signature: bytes) -> None:
    public_key = cert_der_identity.signing.certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


# -- provisioning ---------------------------------------------------------------------------


def test_provisioned_token_pairs_keys_and_certificates_by_id(hsm: Hsm):
    lib = pkcs11.lib(SOFTHSM_MODULE)
    lib.reinitialize()
    token = lib.get_token(token_label=hsm.alice.label)
    identity = hsm.alice.identity
    with token.open(user_pin=hsm.alice.pin) as session:
        certs = {
            bytes(c[Attribute.ID]): bytes(c[Attribute.VALUE])
            for c in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE})
        }
        keys = {
            bytes(k[Attribute.ID])
            for k in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        }
    assert certs == {
        SIGNING_KEY_ID: identity.signing.der(),
        ENCRYPTION_KEY_ID: identity.encryption.der(),
    }
    assert keys == {SIGNING_KEY_ID, ENCRYPTION_KEY_ID}
    assert SIGNING_KEY_ID == b"SIGN" and ENCRYPTION_KEY_ID == b"KEYX"


def test_token_repr_keeps_the_pin_out(hsm: Hsm):
    assert PIN not in repr(hsm.alice) and "王小明" not in repr(hsm.alice)
    assert hsm.alice.env() == {"SOFTHSM2_CONF": str(hsm.alice.conf_path)}


def test_provisioning_refuses_a_non_moica_pin_and_a_duplicate_label(hsm: Hsm):
    directory = hsm.alice.conf_path.parent
    with pytest.raises(ValueError, match="6 to 8 digits"):
        provision_token(hsm.outsider, directory, label="cardd-short", pin="1234")
    with pytest.raises(ValueError, match="already exists"):
        provision_token(hsm.outsider, directory, label=hsm.alice.label, pin=PIN)


# -- discovery ------------------------------------------------------------------------------


def test_tokens_lists_both_tokens_with_flags(signer: Pkcs11Signer, hsm: Hsm):
    infos = {t.label: t for t in signer.tokens() if t.initialized}
    assert set(infos) == {hsm.alice.label, hsm.carol.label}
    alice = infos[hsm.alice.label]
    assert alice.manufacturer == "SoftHSM project"
    assert alice.serial
    assert not alice.pin_locked and not alice.pin_final_try
    assert not alice.protected_authentication_path


def test_find_token_by_certificate_picks_the_right_token(signer: Pkcs11Signer, hsm: Hsm):
    handle = signer.find_token_for_certificate(hsm.carol.signing_cert_der)
    assert handle.info.label == hsm.carol.label
    assert handle.key_id == SIGNING_KEY_ID
    handle = signer.find_token_for_certificate(hsm.alice.signing_cert_der)
    assert handle.info.label == hsm.alice.label


def test_a_certificate_on_no_present_card_is_refused(signer: Pkcs11Signer, hsm: Hsm, spy: LoginSpy):
    prompt = CountingPin(PIN)
    with pytest.raises(CardRemoved):
        signer.sign(hsm.outsider.signing.der(), b"data", prompt)
    assert spy.logins == [] and prompt.buffers == []


def test_module_path_missing(tmp_path: Path):
    with pytest.raises(Pkcs11ModuleMissing):
        Pkcs11Signer(str(tmp_path / "libnothing.so")).tokens()
    not_a_library = tmp_path / "libbroken.so"
    not_a_library.write_bytes(b"not an ELF file")
    with pytest.raises(Pkcs11ModuleMissing):
        Pkcs11Signer(str(not_a_library)).tokens()


# -- signing --------------------------------------------------------------------------------


def test_sign_verifies_with_the_certificates_public_key(
    signer: Pkcs11Signer, hsm: Hsm, spy: LoginSpy
):
    data = hashlib.sha256(b"a").digest() + hashlib.sha256(b"b").digest()
    prompt = CountingPin(PIN)
    signature = signer.sign(hsm.alice.signing_cert_der, data, prompt)
    verify_rs256(hsm.alice.identity, data, signature)
    assert spy.logins == [hsm.alice.label]
    assert prompt.buffers[0] == bytearray(len(PIN))  # zeroed after C_Login


def test_each_token_signs_with_its_own_key(signer: Pkcs11Signer, hsm: Hsm, spy: LoginSpy):
    signature = signer.sign(hsm.carol.signing_cert_der, b"data", hsm.carol.pin_source())
    verify_rs256(hsm.carol.identity, b"data", signature)
    assert spy.logins == [hsm.carol.label]


def test_authenticate_produces_the_product_token(signer: Pkcs11Signer, hsm: Hsm):
    token = authenticate(signer, hsm.alice.signing_cert_der, ORIGIN, NONCE, hsm.alice.pin_source())
    assert list(token) == [
        "format",
        "unverifiedCertificate",
        "algorithm",
        "signature",
        "appVersion",
    ]
    assert token["format"] == "cardd-moica:1"
    assert token["algorithm"] == "RS256"
    assert token["appVersion"] == f"cardd/{__version__}"
    assert base64.b64decode(token["unverifiedCertificate"]) == hsm.alice.signing_cert_der
    signed = hashlib.sha256(ORIGIN.encode()).digest() + hashlib.sha256(NONCE.encode()).digest()
    verify_rs256(hsm.alice.identity, signed, base64.b64decode(token["signature"]))


def test_the_encryption_key_is_never_used_to_sign(signer: Pkcs11Signer, hsm: Hsm, spy: LoginSpy):
    with pytest.raises(InvalidInput):
        signer.sign(hsm.alice.identity.encryption.der(), b"data", hsm.alice.pin_source())
    assert spy.logins == []


def test_wrong_pin_is_one_login_and_never_retried(signer: Pkcs11Signer, hsm: Hsm, spy: LoginSpy):
    wrong = CountingPin(WRONG_PIN)
    with pytest.raises(PinIncorrect) as info:
        signer.sign(hsm.alice.signing_cert_der, b"data", wrong)
    # SoftHSM2 2.6 sets USER_PIN_COUNT_LOW after a wrong PIN but never FINAL_TRY: unknown count.
    assert info.value.tries_left is None
    assert spy.logins == [hsm.alice.label]
    assert len(wrong.buffers) == 1 and wrong.buffers[0] == bytearray(len(WRONG_PIN))
    # The next attempt is a new call with a new PIN; it logs in exactly once more.
    signature = signer.sign(hsm.alice.signing_cert_der, b"data", CountingPin(PIN))
    verify_rs256(hsm.alice.identity, b"data", signature)
    assert spy.logins == [hsm.alice.label, hsm.alice.label]


@pytest.mark.parametrize("bad", ["12345", "123456789", "1234567a", ""])
def test_malformed_pin_is_refused_before_c_login(
    signer: Pkcs11Signer, hsm: Hsm, spy: LoginSpy, bad: str
):
    with pytest.raises(InvalidInput):
        signer.sign(hsm.alice.signing_cert_der, b"data", CountingPin(bad))
    assert spy.logins == []


def test_timeout_and_cancel_stop_before_the_token(signer: Pkcs11Signer, hsm: Hsm, spy: LoginSpy):
    import threading

    with pytest.raises(OperationTimeout):
        signer.sign(hsm.alice.signing_cert_der, b"data", hsm.alice.pin_source(), timeout=0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(OperationCancelled):
        signer.sign(hsm.alice.signing_cert_der, b"data", hsm.alice.pin_source(), cancel=cancel)
    assert spy.logins == []


def test_sessions_are_closed_after_each_signature(signer: Pkcs11Signer, hsm: Hsm):
    # With sessions left logged in, a wrong PIN would get CKR_USER_ALREADY_LOGGED_IN (or sign!).
    for _ in range(3):
        signer.sign(hsm.alice.signing_cert_der, b"data", hsm.alice.pin_source())
    with pytest.raises(PinIncorrect):
        signer.sign(hsm.alice.signing_cert_der, b"data", CountingPin(WRONG_PIN))


# -- the PIN never leaks --------------------------------------------------------------------


def _exception_texts(exc: BaseException) -> list[str]:
    texts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    texts.append("".join(traceback.format_exception(exc)))
    return texts


def test_no_pin_in_logs_or_errors(signer: Pkcs11Signer, hsm: Hsm, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    signer.sign(hsm.alice.signing_cert_der, b"data", CountingPin(PIN))
    authenticate(signer, hsm.alice.signing_cert_der, ORIGIN, NONCE, CountingPin(PIN))
    for pin in (WRONG_PIN, "1234567", "123456789", PIN[:-1] + "x"):
        with pytest.raises(CardError) as info:
            signer.sign(hsm.alice.signing_cert_der, b"data", CountingPin(pin))
        errors.append(info.value)
    with pytest.raises(CardRemoved) as removed:
        signer.sign(hsm.outsider.signing.der(), b"data", CountingPin(PIN))
    errors.append(removed.value)

    assert any(r.name == "cardd.moica.pkcs11" for r in caplog.records), "nothing was logged"
    secrets = [PIN, WRONG_PIN, PIN[:-1], PIN.encode().hex(), WRONG_PIN.encode().hex()]
    texts = [caplog.text] + [t for e in errors for t in _exception_texts(e)]
    texts += [repr(hsm.alice), repr(signer)]
    for text in texts:
        for secret in secrets:
            assert secret not in text
