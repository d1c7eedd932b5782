# SPDX-License-Identifier: Apache-2.0
"""PIN states and card events of PKCS#11 signing, against a test double of python-pkcs11.

**These tests do not use a real PKCS#11 module.** SoftHSM2 has no PIN lockout (it never sets
USER_PIN_FINAL_TRY or USER_PIN_LOCKED; moica.md §4.4), cannot return HiPKI's vendor codes, cannot
lose its card mid-signature and has no PIN pad. So the double below stands in for python-pkcs11's
objects (library → slot → token → session → objects) at exactly the boundary
:mod:`cardd.moica.pkcs11` uses, and raises python-pkcs11's own exception classes (or, for vendor
codes, the bare ``PKCS11Error("Unmapped error code 0x...")`` python-pkcs11 raises for them). It
mimics python-pkcs11 0.10's ``Token.open``: C_OpenSession, then C_Login when a PIN is given, with
the PIN taken from ``user_pin.encode("utf-8")``. tests/integration/test_moica_pkcs11.py covers the
same code against real SoftHSM2.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from cardd.errors import (
    BadNonce,
    CardDataInvalid,
    CardNotSupported,
    CardRemoved,
    InvalidInput,
    NoCard,
    OperationCancelled,
    OperationTimeout,
    OriginMismatch,
    PinBlocked,
    PinIncorrect,
    Pkcs11ModuleMissing,
    ReaderBusy,
    UserCancelled,
)
from cardd.moica.pkcs11 import (
    CKF_PROTECTED_AUTHENTICATION_PATH,
    CKF_USER_PIN_COUNT_LOW,
    CKF_USER_PIN_FINAL_TRY,
    CKF_USER_PIN_LOCKED,
    Pkcs11Signer,
    flag_names,
)
from cardd.moica.sign import _signed_data, authenticate, check_nonce, check_origin

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "moica"
SIGN_DER = (FIXTURES / "sign.der").read_bytes()
ENC_DER = (FIXTURES / "enc.der").read_bytes()
#: What a HiCOS-like token reports when all is well: RNG, LOGIN_REQUIRED, USER_PIN_INITIALIZED,
#: TOKEN_INITIALIZED (the set open-gpki-pkcs11 always reports, moica.md §4.3).
OK_FLAGS = 0x0001 | 0x0004 | 0x0008 | 0x0400
PIN = "13572468"
NONCE = "q" * 43 + "="
ORIGIN = "https://library.example.tw"


# -- the python-pkcs11 double ---------------------------------------------------------------


class FakeCard:
    """One token's state; ``calls`` is the PKCS#11 call log the tests assert on."""

    def __init__(self, cert_der: bytes = SIGN_DER, *, key_id: bytes = b"SIGN") -> None:
        self.flags = OK_FLAGS
        self.present = True
        self.label = "HiCOS PKI Smart Card"
        self.calls: list[str] = []
        self.pins_received: list[Any] = []  # what python-pkcs11 would hand to C_Login
        self.pin_values: list[bytes] = []
        self.login_error: Exception | None = None
        self.flags_after_login_error: int | None = None
        self.sign_error: Exception | None = None
        self.logout_error: Exception | None = None
        self.on_sign: Any = None
        self.on_login: Any = None
        self.objects: list[FakeObject] = [
            FakeObject(ObjectClass.CERTIFICATE, value=cert_der, key_id=key_id),
            FakeObject(ObjectClass.PRIVATE_KEY, key_id=key_id, card=self),
        ]

    @property
    def logins(self) -> int:
        return sum(1 for c in self.calls if c.startswith("C_Login"))


class FakeObject:
    def __init__(
        self,
        object_class: ObjectClass,
        *,
        value: bytes = b"",
        key_id: bytes = b"",
        card: FakeCard | None = None,
    ) -> None:
        self.attrs = {Attribute.CLASS: object_class, Attribute.VALUE: value, Attribute.ID: key_id}
        self.card = card

    def __getitem__(self, key: Any) -> Any:
        return self.attrs[key]

    def sign(self, data: bytes, **kwargs: Any) -> bytes:
        assert self.card is not None
        self.card.calls.append(f"C_Sign({kwargs.get('mechanism')!r}, {len(data)} bytes)")
        if self.card.on_sign is not None:
            self.card.on_sign()
        if self.card.sign_error is not None:
            raise self.card.sign_error
        return b"\x5a" * 256


class FakeSession:
    def __init__(self, card: FakeCard, logged_in: bool) -> None:
        self.card = card
        self.logged_in = logged_in

    def get_objects(self, attrs: dict[Any, Any] | None = None) -> list[FakeObject]:
        self.card.calls.append("C_FindObjects")
        if not self.card.present:
            raise p11e.DeviceRemoved()
        found = []
        for obj in self.card.objects:
            if obj.attrs[Attribute.CLASS] == ObjectClass.PRIVATE_KEY and not self.logged_in:
                continue  # CKA_PRIVATE objects are invisible before C_Login
            if all(obj.attrs.get(k) == v for k, v in (attrs or {}).items()):
                found.append(obj)
        return found

    def close(self) -> None:
        if self.logged_in:
            self.card.calls.append("C_Logout")
            if self.card.logout_error is not None:
                raise self.card.logout_error  # python-pkcs11 then skips C_CloseSession
        self.card.calls.append("C_CloseSession")


class FakeToken:
    """A snapshot, like python-pkcs11's Token: ``flags`` does not change after it is made."""

    def __init__(self, card: FakeCard) -> None:
        self.card = card
        self.label = card.label
        self.serial = b"0000123456789012"
        self.manufacturer_id = "Chunghwa Telecom"
        self.model = "HiCOS"
        self.flags = card.flags

    def open(self, rw: bool = False, user_pin: Any = None) -> FakeSession:
        card = self.card
        if not card.present:
            raise p11e.TokenNotPresent()
        card.calls.append("C_OpenSession")
        if user_pin is None:
            return FakeSession(card, logged_in=False)
        if user_pin is pkcs11.PROTECTED_AUTH:
            if not self.flags & CKF_PROTECTED_AUTHENTICATION_PATH:
                raise p11e.ArgumentsBad(
                    "Protected authentication is not supported by loaded module"
                )
            card.calls.append("C_Login(NULL)")
        else:
            pin = user_pin.encode("utf-8")  # exactly what python-pkcs11 does
            card.pins_received.append(pin)
            card.pin_values.append(bytes(pin))
            card.calls.append("C_Login")
        if card.on_login is not None:
            card.on_login()
        if card.login_error is not None:
            if card.flags_after_login_error is not None:
                card.flags = card.flags_after_login_error
            raise card.login_error
        return FakeSession(card, logged_in=True)


class FakeSlot:
    def __init__(self, slot_id: int, card: FakeCard) -> None:
        self.slot_id = slot_id
        self.card = card

    def get_token(self) -> FakeToken:
        self.card.calls.append("C_GetTokenInfo")
        if not self.card.present:
            raise p11e.TokenNotPresent()
        return FakeToken(self.card)


class FakeLibrary:
    def __init__(self, *cards: FakeCard) -> None:
        self.slots = [FakeSlot(i + 1, card) for i, card in enumerate(cards)]
        self.reinitialized = 0

    def get_slots(self, token_present: bool = False) -> list[FakeSlot]:
        return [s for s in self.slots if s.card.present or not token_present]

    def reinitialize(self) -> None:
        self.reinitialized += 1


class PinPrompt:
    """A PinSource that counts its calls and keeps the buffers it handed out."""

    def __init__(self, pin: str = PIN) -> None:
        self.pin = pin
        self.calls = 0
        self.buffers: list[bytearray] = []

    def __call__(self) -> bytearray:
        self.calls += 1
        buffer = bytearray(self.pin, "ascii")
        self.buffers.append(buffer)
        return buffer


def signer_for(*cards: FakeCard) -> tuple[Pkcs11Signer, FakeLibrary]:
    lib = FakeLibrary(*cards)
    # A fresh path per signer: the per-module locks are keyed by path.
    return Pkcs11Signer(f"/fake/{id(lib)}.so", loader=lambda _path: lib), lib


# -- the happy path, for reference ----------------------------------------------------------


def test_sign_sequence_reads_flags_logs_in_once_signs_then_logs_out_and_closes():
    card = FakeCard()
    signer, _lib = signer_for(card)
    prompt = PinPrompt()
    card.calls.clear()
    assert signer.sign(SIGN_DER, b"x" * 64, prompt) == b"\x5a" * 256
    login = card.calls.index("C_Login")
    assert "C_GetTokenInfo" in card.calls[:login]
    assert card.calls[login + 1 :] == [
        "C_FindObjects",
        f"C_Sign({Mechanism.SHA256_RSA_PKCS!r}, 64 bytes)",
        "C_Logout",
        "C_CloseSession",
    ]
    assert card.logins == 1 and prompt.calls == 1
    assert card.pin_values == [PIN.encode()]


def test_the_pin_buffer_reaches_c_login_as_is_and_is_zeroed_afterwards():
    card = FakeCard()
    signer, _ = signer_for(card)
    prompt = PinPrompt()
    signer.sign(SIGN_DER, b"data", prompt)
    # python-pkcs11 got the caller's bytearray itself, not a str or bytes copy of it ...
    assert card.pins_received[0] is prompt.buffers[0]
    # ... which is zeros now.
    assert prompt.buffers[0] == bytearray(len(PIN))


# -- PIN states -----------------------------------------------------------------------------


def test_wrong_pin_with_final_try_flag_reports_one_try_left_and_is_not_retried():
    card = FakeCard()
    card.login_error = p11e.PinIncorrect()
    card.flags_after_login_error = OK_FLAGS | CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY
    signer, _ = signer_for(card)
    prompt = PinPrompt()
    with pytest.raises(PinIncorrect) as info:
        signer.sign(SIGN_DER, b"data", prompt)
    assert info.value.tries_left == 1
    assert card.logins == 1 and prompt.calls == 1
    assert not any(c.startswith("C_Sign") for c in card.calls)
    assert prompt.buffers[0] == bytearray(len(PIN))


@pytest.mark.parametrize(("code", "left"), [(0x80000002, 2), (0x80000001, 1)])
def test_hipki_vendor_codes_give_tries_left(code: int, left: int):
    card = FakeCard()
    # python-pkcs11 has no class for vendor codes: it raises a bare PKCS11Error with this text.
    card.login_error = p11e.PKCS11Error(f"Unmapped error code {hex(code)}")
    signer, _ = signer_for(card)
    with pytest.raises(PinIncorrect) as info:
        signer.sign(SIGN_DER, b"data", PinPrompt())
    assert info.value.tries_left == left
    assert card.logins == 1


def test_wrong_pin_with_count_low_only_says_few_tries_left_without_a_number():
    card = FakeCard()
    card.login_error = p11e.PinIncorrect()
    card.flags_after_login_error = OK_FLAGS | CKF_USER_PIN_COUNT_LOW
    signer, _ = signer_for(card)
    with pytest.raises(PinIncorrect) as info:
        signer.sign(SIGN_DER, b"data", PinPrompt())
    assert info.value.tries_left is None
    assert "few tries" in info.value.message


def test_wrong_pin_without_flags_has_unknown_tries_left():
    # open-gpki-pkcs11 never sets the PIN flags (moica.md §4.3): absent flags mean unknown.
    card = FakeCard()
    card.login_error = p11e.PinIncorrect()
    signer, _ = signer_for(card)
    with pytest.raises(PinIncorrect) as info:
        signer.sign(SIGN_DER, b"data", PinPrompt())
    assert info.value.tries_left is None


def test_wrong_pin_that_locks_the_card_is_reported_as_blocked():
    card = FakeCard()
    card.login_error = p11e.PinIncorrect()
    card.flags_after_login_error = OK_FLAGS | CKF_USER_PIN_LOCKED
    signer, _ = signer_for(card)
    with pytest.raises(PinBlocked):
        signer.sign(SIGN_DER, b"data", PinPrompt())
    assert card.logins == 1


def test_locked_flag_before_login_refuses_without_asking_for_or_sending_a_pin():
    card = FakeCard()
    card.flags = OK_FLAGS | CKF_USER_PIN_LOCKED
    signer, _ = signer_for(card)
    prompt = PinPrompt()
    with pytest.raises(PinBlocked):
        signer.sign(SIGN_DER, b"data", prompt)
    assert card.logins == 0
    assert prompt.calls == 0
    assert card.pins_received == []


def test_final_try_flag_before_login_still_allows_one_login():
    # FINAL_TRY is a warning for the PIN UI (TokenInfo.pin_final_try), not a refusal.
    card = FakeCard()
    card.flags = OK_FLAGS | CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY
    signer, _ = signer_for(card)
    assert signer.find_token_for_certificate(SIGN_DER).info.pin_final_try
    signer.sign(SIGN_DER, b"data", PinPrompt())
    assert card.logins == 1


def test_c_login_pin_locked_is_pin_blocked():
    card = FakeCard()
    card.login_error = p11e.PinLocked()
    signer, _ = signer_for(card)
    with pytest.raises(PinBlocked):
        signer.sign(SIGN_DER, b"data", PinPrompt())
    assert card.logins == 1


def test_c_login_pin_len_range_is_invalid_input():
    card = FakeCard()
    card.login_error = p11e.PinLenRange()
    signer, _ = signer_for(card)
    with pytest.raises(InvalidInput):
        signer.sign(SIGN_DER, b"data", PinPrompt())


@pytest.mark.parametrize("bad", ["12345", "123456789", "12345a", "", "１２３４５６", "123 456"])
def test_malformed_pin_never_reaches_c_login_and_is_zeroed(bad: str):
    card = FakeCard()
    signer, _ = signer_for(card)
    buffer = bytearray(bad, "utf-8")
    with pytest.raises(InvalidInput):
        signer.sign(SIGN_DER, b"data", lambda: buffer)
    assert card.logins == 0
    assert buffer == bytearray(len(buffer))


def test_a_pin_source_returning_str_is_refused_before_c_login():
    card = FakeCard()
    signer, _ = signer_for(card)
    with pytest.raises(TypeError):
        signer.sign(SIGN_DER, b"data", lambda: PIN)  # type: ignore[arg-type,return-value]
    assert card.logins == 0


def test_already_logged_in_elsewhere_refuses_to_sign():
    # Signing would otherwise go ahead without this PIN having been checked.
    card = FakeCard()
    card.login_error = p11e.UserAlreadyLoggedIn()
    signer, _ = signer_for(card)
    with pytest.raises(ReaderBusy):
        signer.sign(SIGN_DER, b"data", PinPrompt())
    assert not any(c.startswith("C_Sign") for c in card.calls)


def test_a_failed_login_reinitialises_the_module_to_free_the_lost_session():
    card = FakeCard()
    card.login_error = p11e.PinIncorrect()
    signer, lib = signer_for(card)
    with pytest.raises(PinIncorrect):
        signer.sign(SIGN_DER, b"data", PinPrompt())
    assert lib.reinitialized == 1


# -- PIN pad --------------------------------------------------------------------------------


def test_protected_authentication_path_logs_in_without_a_pin():
    card = FakeCard()
    card.flags = OK_FLAGS | CKF_PROTECTED_AUTHENTICATION_PATH
    signer, _ = signer_for(card)
    prompt = PinPrompt()
    signer.sign(SIGN_DER, b"data", prompt)
    assert prompt.calls == 0
    assert "C_Login(NULL)" in card.calls and card.pins_received == []


def test_cancel_on_the_pin_pad_is_user_cancelled():
    card = FakeCard()
    card.flags = OK_FLAGS | CKF_PROTECTED_AUTHENTICATION_PATH
    card.login_error = p11e.FunctionCancelled()
    signer, _ = signer_for(card)
    with pytest.raises(UserCancelled):
        signer.sign(SIGN_DER, b"data", PinPrompt())


def test_a_pin_source_may_cancel():
    card = FakeCard()
    signer, _ = signer_for(card)

    def closed_dialog() -> bytearray:
        raise UserCancelled("the PIN dialog was closed")

    with pytest.raises(UserCancelled):
        signer.sign(SIGN_DER, b"data", closed_dialog)
    assert card.logins == 0


# -- the card going away --------------------------------------------------------------------


def test_card_removed_mid_sign_is_card_removed_and_the_session_is_still_closed():
    card = FakeCard()
    card.sign_error = p11e.DeviceRemoved()
    signer, _ = signer_for(card)
    with pytest.raises(CardRemoved):
        signer.sign(SIGN_DER, b"data", PinPrompt())
    assert card.calls[-2:] == ["C_Logout", "C_CloseSession"]


@pytest.mark.parametrize(
    "error", [p11e.TokenNotPresent(), p11e.DeviceRemoved(), p11e.SessionHandleInvalid()]
)
def test_card_gone_at_login_is_card_removed(error: Exception):
    card = FakeCard()
    card.login_error = error
    signer, _ = signer_for(card)
    with pytest.raises(CardRemoved):
        signer.sign(SIGN_DER, b"data", PinPrompt())


def test_a_failing_logout_does_not_hide_the_signature_and_frees_the_session():
    card = FakeCard()
    card.logout_error = p11e.DeviceRemoved()
    signer, lib = signer_for(card)
    assert signer.sign(SIGN_DER, b"data", PinPrompt()) == b"\x5a" * 256
    assert lib.reinitialized == 1  # python-pkcs11 skipped C_CloseSession


def test_certificate_not_on_any_present_card_is_refused_before_any_pin():
    other = FakeCard(ENC_DER, key_id=b"KEYX")  # another card, not the one the certificate came from
    signer, _ = signer_for(other)
    prompt = PinPrompt()
    with pytest.raises(CardRemoved):
        signer.sign(SIGN_DER, b"data", prompt)
    assert prompt.calls == 0 and other.logins == 0


def test_no_card_at_all_is_no_card():
    card = FakeCard()
    card.present = False
    signer, _ = signer_for(card)
    with pytest.raises(NoCard):
        signer.find_token_for_certificate(SIGN_DER)


def test_the_right_token_is_chosen_among_several():
    other = FakeCard(ENC_DER, key_id=b"KEYX")
    mine = FakeCard()
    signer, _ = signer_for(other, mine)
    handle = signer.find_token_for_certificate(SIGN_DER)
    assert handle.info.slot_id == 2 and handle.key_id == b"SIGN"
    signer.sign(SIGN_DER, b"data", PinPrompt())
    assert mine.logins == 1 and other.logins == 0


def test_certificate_without_its_key_is_card_data_invalid():
    card = FakeCard()
    card.objects = [o for o in card.objects if o.attrs[Attribute.CLASS] != ObjectClass.PRIVATE_KEY]
    signer, _ = signer_for(card)
    with pytest.raises(CardDataInvalid):
        signer.sign(SIGN_DER, b"data", PinPrompt())
    assert card.calls[-2:] == ["C_Logout", "C_CloseSession"]


def test_mechanism_not_supported_is_card_not_supported():
    card = FakeCard()
    card.sign_error = p11e.MechanismInvalid()
    signer, _ = signer_for(card)
    with pytest.raises(CardNotSupported):
        signer.sign(SIGN_DER, b"data", PinPrompt())


def test_only_a_signing_certificate_may_sign():
    card = FakeCard(ENC_DER, key_id=b"KEYX")
    signer, _ = signer_for(card)
    with pytest.raises(InvalidInput, match="digitalSignature"):
        signer.sign(ENC_DER, b"data", PinPrompt())
    assert card.calls == []


# -- timeouts, cancellation, concurrency ----------------------------------------------------


def test_cancel_between_steps_drops_the_pin_unsent():
    card = FakeCard()
    signer, _ = signer_for(card)
    cancel = threading.Event()
    buffers: list[bytearray] = []

    def prompt_then_cancel() -> bytearray:
        cancel.set()  # e.g. the page went away while the person typed
        buffers.append(bytearray(PIN, "ascii"))
        return buffers[-1]

    with pytest.raises(OperationCancelled):
        signer.sign(SIGN_DER, b"data", prompt_then_cancel, cancel=cancel)
    assert card.logins == 0
    assert buffers[0] == bytearray(len(PIN))


def test_deadline_passed_while_typing_drops_the_pin_unsent():
    card = FakeCard()
    signer, _ = signer_for(card)

    def slow_person() -> bytearray:
        time.sleep(0.05)
        return bytearray(PIN, "ascii")

    with pytest.raises(OperationTimeout):
        signer.sign(SIGN_DER, b"data", slow_person, timeout=0.01)
    assert card.logins == 0


def test_cancel_after_login_still_logs_out_and_closes():
    card = FakeCard()
    signer, _ = signer_for(card)
    cancel = threading.Event()
    card.on_login = cancel.set  # cancelled while C_Login ran: seen before C_Sign
    with pytest.raises(OperationCancelled):
        signer.sign(SIGN_DER, b"data", PinPrompt(), cancel=cancel)
    assert card.calls[-2:] == ["C_Logout", "C_CloseSession"]
    assert not any(c.startswith("C_Sign") for c in card.calls)


def test_a_second_signature_while_one_waits_for_a_pin_is_reader_busy():
    card = FakeCard()
    signer, _ = signer_for(card)
    typing = threading.Event()
    release = threading.Event()
    results: list[object] = []

    def slow_prompt() -> bytearray:
        typing.set()
        release.wait(5)
        return bytearray(PIN, "ascii")

    worker = threading.Thread(
        target=lambda: results.append(signer.sign(SIGN_DER, b"data", slow_prompt))
    )
    worker.start()
    assert typing.wait(5)
    with pytest.raises(ReaderBusy):
        signer.sign(SIGN_DER, b"data", PinPrompt())
    release.set()
    worker.join(5)
    assert results == [b"\x5a" * 256]
    assert card.logins == 1


# -- loading, listing -----------------------------------------------------------------------


def test_module_missing_or_unloadable():
    with pytest.raises(Pkcs11ModuleMissing):
        Pkcs11Signer("/nonexistent/libnothing.so").tokens()

    def broken(_path: str) -> Any:
        raise p11e.PKCS11Error("OS exception while loading x: invalid ELF header")

    with pytest.raises(Pkcs11ModuleMissing):
        Pkcs11Signer("/fake/broken.so", loader=broken).tokens()


def test_loading_is_lazy():
    loads: list[str] = []

    def loader(path: str) -> FakeLibrary:
        loads.append(path)
        return FakeLibrary(FakeCard())

    signer = Pkcs11Signer("/fake/lazy.so", loader=loader)
    assert loads == []
    signer.tokens()
    signer.tokens()
    assert loads == ["/fake/lazy.so"]


def test_tokens_reports_flags():
    card = FakeCard()
    card.flags = OK_FLAGS | CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY
    signer, _ = signer_for(card)
    (info,) = signer.tokens()
    assert info.label == "HiCOS PKI Smart Card"
    assert info.serial == "0000123456789012"
    assert info.manufacturer == "Chunghwa Telecom"
    assert info.initialized and info.pin_count_low and info.pin_final_try
    assert not info.pin_locked and not info.protected_authentication_path
    assert flag_names(info.flags) == ["CKF_USER_PIN_COUNT_LOW", "CKF_USER_PIN_FINAL_TRY"]


# -- the authentication token's inputs (cardd.moica.sign) -----------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://library.example.tw",
        "https://library.example.tw/",
        "https://library.example.tw/login",
        "https://library.example.tw?x=1",
        "https://user@library.example.tw",
        "https://Library.example.tw",
        "https://library.example.tw:443",
        "https://library.example.tw:0",
        "https://library.example.tw:65536",
        "https://library.example.tw:08443",
        "https://[::g]",
        "https://圖書館.tw",
        "null",
        "",
        "https://" + "a." * 124 + "tw",
    ],
)
def test_bad_origins_are_refused_before_the_card_is_touched(origin: str):
    card = FakeCard()
    signer, _ = signer_for(card)
    with pytest.raises(OriginMismatch):  # the verifier's own rule (cardd.moica.token)
        authenticate(signer, SIGN_DER, origin, NONCE, PinPrompt())
    assert card.calls == []


@pytest.mark.parametrize(
    "origin",
    [
        "https://library.example.tw",
        "https://lib.example.tw:8443",
        "https://127.0.0.1",
        "https://[::1]:4443",
    ],
)
def test_good_origins(origin: str):
    check_origin(origin)


@pytest.mark.parametrize(
    "nonce",
    ["", "A" * 43, "A" * 129, "A" * 43 + "!", "A" * 40 + "=AAA", "A" * 44 + "===", "Ä" * 44],
)
def test_bad_nonces_are_refused_before_the_card_is_touched(nonce: str):
    card = FakeCard()
    signer, _ = signer_for(card)
    with pytest.raises(BadNonce):  # the verifier's own rule (cardd.moica.token)
        authenticate(signer, SIGN_DER, ORIGIN, nonce, PinPrompt())
    assert card.calls == []


@pytest.mark.parametrize("nonce", ["A" * 44, "A" * 128, "ab+/" * 11, "ab-_" * 11, "A" * 42 + "=="])
def test_good_nonces(nonce: str):
    check_nonce(nonce)


def test_authenticate_signs_exactly_the_two_hashes():
    import hashlib

    card = FakeCard()
    signer, _ = signer_for(card)
    token = authenticate(signer, SIGN_DER, ORIGIN, NONCE, PinPrompt())
    assert set(token) == {"format", "unverifiedCertificate", "algorithm", "signature", "appVersion"}
    expected = hashlib.sha256(ORIGIN.encode()).digest() + hashlib.sha256(NONCE.encode()).digest()
    assert _signed_data(ORIGIN, NONCE) == expected
    assert f"C_Sign({Mechanism.SHA256_RSA_PKCS!r}, 64 bytes)" in card.calls
