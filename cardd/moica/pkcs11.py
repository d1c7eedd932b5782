# SPDX-License-Identifier: Apache-2.0
"""Signing with a citizen certificate card through a PKCS#11 module (moica.md §4).

``cardd`` never sends VERIFY or signing APDUs itself: both card generations wrap them in vendor
secrets (moica.md §4.1). It loads the card's PKCS#11 module (HiCOS, ``open-gpki-pkcs11``; SoftHSM2
in tests) and this is the only module that imports python-pkcs11 (ruff TID251 enforces it).

Signing sequence (:meth:`Pkcs11Signer.sign`)::

    find the token whose certificate object is byte-for-byte the certificate read from the card
      (none → card_removed / no_card: never sign with some other card that happens to be present)
    C_GetTokenInfo         USER_PIN_LOCKED → pin_blocked, nothing sent
    PinSource()            the PIN, as a bytearray; 6–8 ASCII digits or invalid_input, nothing sent
    C_OpenSession + C_Login(CKU_USER), once; never retried, never re-submitted
    C_FindObjects          the private key with the certificate's CKA_ID
    C_SignInit(CKM_SHA256_RSA_PKCS) + C_Sign
    C_Logout + C_CloseSession, always (finally)

The PIN's lifetime. A Python ``str`` is immutable and cannot be wiped, and may be interned or copied
by the runtime at will. So the PIN never becomes a ``str`` here: :data:`PinSource` is a callable
that returns a ``bytearray`` at the last moment, the buffer goes to C_Login as it is (see
:class:`_PinBuffer` for how, python-pkcs11 itself wants a ``str``), and it is overwritten with zeros
as soon as C_Login returns, on every path. What this cannot promise: copies the caller made before
filling the bytearray (an HTTP body, a form field, a terminal line buffer), copies the PKCS#11
module keeps (HiCOS/open-gpki-pkcs11 cache the PIN until C_Logout, moica.md §4.2), or pages
swapped to disk. It keeps the PIN out of our heap for as long as we can control it, nothing more.
The PIN is never logged; log lines carry slot ids and CKR names only.

Timeouts and cancellation. ``timeout`` and ``cancel`` are checked between the steps above. A
PKCS#11 call cannot be interrupted from Python (a PIN-pad C_Login waits for the person, C_Sign
for the card), so a deadline that passes during one is noticed when it returns, and a PIN
obtained after the deadline is discarded without being sent.

Threads. python-pkcs11 calls ``C_Initialize(NULL)``, which tells the module the application will
not call it from several threads at once, and it shares one initialised library per module path
per process. So every call into the module goes through one lock per module path, and only one
signature per module path is in progress at a time (a second gets ``reader_busy`` instead of
waiting behind someone typing a PIN). The lock is held per call, not while the PinSource runs;
but a PIN-pad C_Login holds it for as long as the person takes at the reader.

Module configuration is read at ``C_Initialize``: SoftHSM2 reads ``SOFTHSM2_CONF`` (and its token
directory) then and only then, so the variable must be set before the first call in the process,
or :meth:`Pkcs11Signer.reload` called afterwards. Readers and tokens created after initialisation
may likewise be invisible until a reload.

python-pkcs11 quirks (0.10.1; the dependency is pinned below 1.0 and the tests cover each):

* ``Token.open(user_pin=...)`` does C_OpenSession and C_Login in one call, and there is no
  separate login. If C_Login fails, the session it opened is never closed (its handle is lost).
  We reinitialise the library after a failed login, which closes every session of this process
  on that module; this is safe because no other session is kept open across steps.
* ``Session.close()`` skips C_CloseSession when C_Logout fails; the same reinitialisation applies.
* ``Token.flags`` is a snapshot from when the ``Token`` object was made; fresh flags need a fresh
  ``slot.get_token()`` (one C_GetTokenInfo).
* Return codes without a class of their own (the vendor's ``CKR_VENDOR_DEFINED + n``) arrive as a
  bare ``PKCS11Error("Unmapped error code 0x...")``; the code is recovered from that text.
* Exceptions carry no CKR value; :data:`_CKR_OF_EXCEPTION` maps the classes back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import pkcs11
from cryptography import x509
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from cardd.errors import (
    CardDataInvalid,
    CardError,
    CardMute,
    CardNotSupported,
    CardRemoved,
    InvalidInput,
    NoCard,
    OperationCancelled,
    OperationTimeout,
    PinBlocked,
    PinIncorrect,
    Pkcs11ModuleMissing,
    ReaderBusy,
    UserCancelled,
)
from cardd.log import pin_scope

logger = logging.getLogger(__name__)

#: Token flags (PKCS#11 v2.40 CK_TOKEN_INFO), as plain ints so callers need no python-pkcs11.
CKF_LOGIN_REQUIRED = 0x0000_0004
CKF_PROTECTED_AUTHENTICATION_PATH = 0x0000_0100
CKF_TOKEN_INITIALIZED = 0x0000_0400
#: A wrong user PIN has been entered since the last successful login.
CKF_USER_PIN_COUNT_LOW = 0x0001_0000
#: The next wrong user PIN locks the token.
CKF_USER_PIN_FINAL_TRY = 0x0002_0000
CKF_USER_PIN_LOCKED = 0x0004_0000

CKR_SLOT_ID_INVALID = 0x003
CKR_GENERAL_ERROR = 0x005
CKR_FUNCTION_FAILED = 0x006
CKR_ARGUMENTS_BAD = 0x007
CKR_DEVICE_ERROR = 0x030
CKR_DEVICE_MEMORY = 0x031
CKR_DEVICE_REMOVED = 0x032
CKR_FUNCTION_CANCELED = 0x050
CKR_FUNCTION_NOT_SUPPORTED = 0x054
CKR_KEY_TYPE_INCONSISTENT = 0x063
CKR_KEY_FUNCTION_NOT_PERMITTED = 0x068
CKR_MECHANISM_INVALID = 0x070
CKR_PIN_INCORRECT = 0x0A0
CKR_PIN_INVALID = 0x0A1
CKR_PIN_LEN_RANGE = 0x0A2
CKR_PIN_EXPIRED = 0x0A3
CKR_PIN_LOCKED = 0x0A4
CKR_SESSION_CLOSED = 0x0B0
CKR_SESSION_HANDLE_INVALID = 0x0B3
CKR_TOKEN_NOT_PRESENT = 0x0E0
CKR_TOKEN_NOT_RECOGNIZED = 0x0E1
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_USER_NOT_LOGGED_IN = 0x101
CKR_USER_ANOTHER_ALREADY_LOGGED_IN = 0x104
CKR_VENDOR_DEFINED = 0x8000_0000
#: HiPKI's codes for a wrong PIN with one / two tries left (moica.md §4.3; the vendor module
#: returning them from C_Login is [uncertain], so they are honoured but not relied on).
CKR_VENDOR_PIN_ONE_TRY_LEFT = CKR_VENDOR_DEFINED + 1
CKR_VENDOR_PIN_TWO_TRIES_LEFT = CKR_VENDOR_DEFINED + 2

_CKR_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("CKR_") and isinstance(value, int)
}

#: python-pkcs11 raises one class per return code but keeps no code; this maps them back. Codes
#: without a class (CKR_KEY_FUNCTION_NOT_PERMITTED, vendor codes) are read from the message.
_CKR_OF_EXCEPTION: dict[type[BaseException], int] = {
    p11e.SlotIDInvalid: CKR_SLOT_ID_INVALID,
    p11e.GeneralError: CKR_GENERAL_ERROR,
    p11e.FunctionFailed: CKR_FUNCTION_FAILED,
    p11e.ArgumentsBad: CKR_ARGUMENTS_BAD,
    p11e.DeviceError: CKR_DEVICE_ERROR,
    p11e.DeviceMemory: CKR_DEVICE_MEMORY,
    p11e.DeviceRemoved: CKR_DEVICE_REMOVED,
    p11e.FunctionCancelled: CKR_FUNCTION_CANCELED,
    p11e.FunctionNotSupported: CKR_FUNCTION_NOT_SUPPORTED,
    p11e.KeyTypeInconsistent: CKR_KEY_TYPE_INCONSISTENT,
    p11e.MechanismInvalid: CKR_MECHANISM_INVALID,
    p11e.PinIncorrect: CKR_PIN_INCORRECT,
    p11e.PinInvalid: CKR_PIN_INVALID,
    p11e.PinLenRange: CKR_PIN_LEN_RANGE,
    p11e.PinExpired: CKR_PIN_EXPIRED,
    p11e.PinLocked: CKR_PIN_LOCKED,
    p11e.SessionClosed: CKR_SESSION_CLOSED,
    p11e.SessionHandleInvalid: CKR_SESSION_HANDLE_INVALID,
    p11e.TokenNotPresent: CKR_TOKEN_NOT_PRESENT,
    p11e.TokenNotRecognised: CKR_TOKEN_NOT_RECOGNIZED,
    p11e.UserAlreadyLoggedIn: CKR_USER_ALREADY_LOGGED_IN,
    p11e.UserNotLoggedIn: CKR_USER_NOT_LOGGED_IN,
    p11e.AnotherUserAlreadyLoggedIn: CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
}
_UNMAPPED_RE = re.compile(r"Unmapped error code (0x[0-9a-fA-F]+)")

#: The card or its session went away: the caller should ask for the card again.
_CKR_GONE = frozenset(
    {CKR_TOKEN_NOT_PRESENT, CKR_DEVICE_REMOVED, CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED}
)
_CKR_UNSUPPORTED = frozenset(
    {
        CKR_MECHANISM_INVALID,
        CKR_KEY_TYPE_INCONSISTENT,
        CKR_KEY_FUNCTION_NOT_PERMITTED,
        CKR_FUNCTION_NOT_SUPPORTED,
        CKR_TOKEN_NOT_RECOGNIZED,
    }
)

#: MOICA's PIN policy (moica.md §4.3): checked here so a malformed PIN never reaches the card,
#: where it might cost a retry.
PIN_MIN_LENGTH = 6
PIN_MAX_LENGTH = 8

#: Returns the PIN as a bytearray of ASCII digits, called once per signature, right before
#: C_Login; the buffer is zeroed afterwards. It may raise (e.g. UserCancelled) to abort.
PinSource = Callable[[], bytearray]


# -- the python-pkcs11 boundary ---------------------------------------------------------------
# The part of python-pkcs11's object model this module uses. The real objects satisfy it; the unit
# tests' double implements it to reach the PIN states SoftHSM2 cannot produce (it has no lockout).


class P11Object(Protocol):
    def __getitem__(self, key: Any) -> Any: ...


class P11Key(P11Object, Protocol):
    def sign(self, data: bytes, **kwargs: Any) -> bytes: ...


class P11Session(Protocol):
    def get_objects(self, attrs: dict[Any, Any] | None = None) -> Iterable[Any]: ...

    def close(self) -> None: ...


class P11Token(Protocol):
    @property
    def label(self) -> str: ...

    @property
    def serial(self) -> bytes: ...

    @property
    def manufacturer_id(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def flags(self) -> int: ...

    def open(self, rw: bool = False, user_pin: Any = None) -> P11Session: ...


class P11Slot(Protocol):
    @property
    def slot_id(self) -> int: ...

    def get_token(self) -> P11Token: ...


class P11Library(Protocol):
    def get_slots(self, token_present: bool = False) -> list[Any]: ...

    def reinitialize(self) -> None: ...


_LOADED: dict[str, P11Library] = {}
_LOADED_GUARD = threading.Lock()


def load_python_pkcs11(module_path: str) -> P11Library:
    """python-pkcs11's library object for ``module_path``, loaded and C_Initialize'd once per process.

    Cached here as well as in python-pkcs11 (0.10 caches per path; older releases kept one global
    function list and did not like a second ``lib()``).
    """
    with _LOADED_GUARD:
        if module_path in _LOADED:
            return _LOADED[module_path]
        if not os.path.isfile(module_path):
            raise Pkcs11ModuleMissing(f"no PKCS#11 module at {module_path}")
        try:
            lib = cast(P11Library, pkcs11.lib(module_path))
        except RuntimeError as exc:
            # dlopen failures (not a shared object, wrong architecture, a missing dependency) and
            # a failing C_GetFunctionList/C_Initialize: PKCS11Error in 0.10, RuntimeError before.
            raise Pkcs11ModuleMissing(
                f"cannot load the PKCS#11 module {module_path}: {exc}"
            ) from exc
        _LOADED[module_path] = lib
        return lib


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    """What C_GetTokenInfo says about one token, at the moment it was asked."""

    slot_id: int
    label: str
    serial: str
    manufacturer: str
    model: str
    flags: int

    @property
    def pin_count_low(self) -> bool:
        return bool(self.flags & CKF_USER_PIN_COUNT_LOW)

    @property
    def pin_final_try(self) -> bool:
        """The next wrong PIN locks the card: a PIN UI should say so before asking."""
        return bool(self.flags & CKF_USER_PIN_FINAL_TRY)

    @property
    def pin_locked(self) -> bool:
        return bool(self.flags & CKF_USER_PIN_LOCKED)

    @property
    def initialized(self) -> bool:
        """False for a blank token (SoftHSM2 always shows one spare, uninitialised slot)."""
        return bool(self.flags & CKF_TOKEN_INITIALIZED)

    @property
    def protected_authentication_path(self) -> bool:
        """The PIN is typed on the reader's PIN pad; cardd never sees it."""
        return bool(self.flags & CKF_PROTECTED_AUTHENTICATION_PATH)

    @classmethod
    def of(cls, slot_id: int, token: P11Token) -> TokenInfo:
        return cls(
            slot_id=slot_id,
            label=token.label.strip(),
            serial=bytes(token.serial).decode("ascii", "replace").strip(),
            manufacturer=token.manufacturer_id.strip(),
            model=token.model.strip(),
            flags=int(token.flags),
        )


@dataclass(frozen=True)
class TokenHandle:
    """The token holding a given certificate, and the CKA_ID that pairs it with its key."""

    info: TokenInfo
    key_id: bytes
    slot: P11Slot = field(repr=False, compare=False)


# -- the signer -----------------------------------------------------------------------------

_LOCKS_GUARD = threading.Lock()
_LIBRARY_LOCKS: dict[str, threading.RLock] = {}
_SIGN_LOCKS: dict[str, threading.Lock] = {}


def _locks_for(module_path: str) -> tuple[threading.RLock, threading.Lock]:
    # Per path, not per signer: python-pkcs11 shares one initialised library per path.
    with _LOCKS_GUARD:
        if module_path not in _LIBRARY_LOCKS:
            _LIBRARY_LOCKS[module_path] = threading.RLock()
            _SIGN_LOCKS[module_path] = threading.Lock()
        return _LIBRARY_LOCKS[module_path], _SIGN_LOCKS[module_path]


class Pkcs11Signer:
    """Signs with a key on a card through one PKCS#11 module.

    :param module_path: the module's shared library. Nothing is loaded until first use; a missing
        or unloadable module raises :class:`~cardd.errors.Pkcs11ModuleMissing` then.
    :param loader: how to get python-pkcs11's library object for a path; tests pass a spy or a
        double here. Everything else talks to the module only through what it returns.
    """

    def __init__(
        self, module_path: str, *, loader: Callable[[str], P11Library] | None = None
    ) -> None:
        self.module_path = module_path
        self._loader = loader or load_python_pkcs11
        self._lib: P11Library | None = None
        self._lock, self._sign_lock = _locks_for(module_path)

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self.module_path!r})"

    # -- discovery ------------------------------------------------------------------------

    def tokens(self) -> list[TokenInfo]:
        """Every token present in a slot of this module, with its flags as of now."""
        found: list[TokenInfo] = []
        for slot in self._slots():
            try:
                found.append(self._token_info(slot))
            except CardError as exc:
                # One odd slot (a card pulled just now, an unsupported card) must not hide the rest.
                logger.debug("slot %s skipped: %s", _slot_id(slot), exc.code)
        return found

    def certificates(self) -> list[tuple[TokenInfo, bytes]]:
        """Every certificate object on every present token, without a PIN.

        For cards cardd cannot read over APDUs itself (MOICA gen2, contactless): the module
        reads them (moica.md §3.4).
        """
        out: list[tuple[TokenInfo, bytes]] = []
        for slot in self._slots():

            def _list(slot: P11Slot = slot) -> list[tuple[TokenInfo, bytes]]:
                token = slot.get_token()
                session = token.open()
                try:
                    info = TokenInfo.of(slot.slot_id, token)
                    return [
                        (info, bytes(obj[Attribute.VALUE]))
                        for obj in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE})
                    ]
                finally:
                    session.close()

            try:
                out.extend(self._locked("C_FindObjects", _list))
            except CardDataInvalid:
                raise
            except CardError as exc:
                # e.g. SoftHSM's free slot with an uninitialised token: not a card, skip it
                logger.debug("slot %s skipped while listing certificates: %s", _slot_id(slot), exc.code)
        return out

    def find_token_for_certificate(self, cert_der: bytes) -> TokenHandle:
        """The token whose certificate object is exactly ``cert_der``.

        ``cert_der`` is the signing certificate cardd read from the card in the chosen reader. The
        comparison is on the full DER, so another card that happens to be present is never used.

        :raises NoCard: the module sees no token at all.
        :raises CardRemoved: tokens are present but none holds this certificate (the card was
            taken out or swapped since it was read): refuse to sign.
        """
        slots = self._slots()
        if not slots:
            raise NoCard("the PKCS#11 module sees no card")
        for slot in slots:
            try:
                handle = self._locked("C_FindObjects", self._match_certificate, slot, cert_der)
            except CardDataInvalid:
                raise  # the certificate is there but unusable: say so, do not look elsewhere
            except CardError as exc:
                logger.debug(
                    "slot %s skipped while looking for the certificate: %s",
                    _slot_id(slot),
                    exc.code,
                )
                continue
            if handle is not None:
                logger.debug("certificate found on the token in slot %s", handle.info.slot_id)
                return handle
        raise CardRemoved(
            "the card holding this certificate is not present (removed or swapped); not signing"
        )

    # -- signing --------------------------------------------------------------------------

    def sign(
        self,
        cert_der: bytes,
        data: bytes,
        pin: PinSource,
        *,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """RSASSA-PKCS1-v1_5 / SHA-256 (CKM_SHA256_RSA_PKCS) over ``data`` with the key of ``cert_der``.

        One C_Login, never retried: a wrong PIN raises :class:`~cardd.errors.PinIncorrect` and the
        next attempt is the caller's (the person's) decision.

        :param pin: called at most once, after the token's flags were read and only when the
            token has no PIN pad; the bytearray it returns is zeroed before this returns.
        :param timeout: seconds for the whole operation, checked between steps.
        :param cancel: set from another thread to stop at the next step.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        _checkpoint(deadline, cancel, "looking for the card")
        _require_signing_certificate(cert_der)
        if not self._sign_lock.acquire(blocking=False):
            raise ReaderBusy("another signature is in progress on this PKCS#11 module")
        try:
            return self._sign(cert_der, data, pin, deadline, cancel)
        finally:
            self._sign_lock.release()

    def reload(self) -> None:
        """Finalise and initialise the module again.

        Picks up readers plugged in since the module was initialised and, for SoftHSM2, a changed
        ``SOFTHSM2_CONF``. Closes every session this process has on the module.
        """
        with self._lock:
            # Even right after loading: python-pkcs11 may hand back a library another signer
            # initialised earlier in this process, under the old configuration.
            lib = self._library()
            try:
                lib.reinitialize()
            except p11e.PKCS11Error as exc:
                self._lib = None
                raise _map_error(exc, "reinitialising the module") from exc

    # -- internals ------------------------------------------------------------------------

    def _sign(
        self,
        cert_der: bytes,
        data: bytes,
        pin: PinSource,
        deadline: float | None,
        cancel: threading.Event | None,
    ) -> bytes:
        handle = self.find_token_for_certificate(cert_der)
        _checkpoint(deadline, cancel, "reading the PIN status")
        # Fresh flags: the handle's may be stale, and these decide whether a PIN is sent at all.
        info = self._token_info(handle.slot)
        if info.pin_locked:
            logger.info("token in slot %s reports USER_PIN_LOCKED; not logging in", info.slot_id)
            raise PinBlocked("the card's PIN is locked; nothing was sent to the card")
        if info.pin_final_try:
            logger.info("token in slot %s reports USER_PIN_FINAL_TRY", info.slot_id)
        session = self._login(handle, info, pin, deadline, cancel)
        try:
            _checkpoint(deadline, cancel, "signing")
            return self._locked("C_Sign", self._sign_in_session, session, handle.key_id, data)
        finally:
            self._close(session, info.slot_id)

    def _login(
        self,
        handle: TokenHandle,
        info: TokenInfo,
        pin: PinSource,
        deadline: float | None,
        cancel: threading.Event | None,
    ) -> P11Session:
        """The one C_Login of a signature. The PIN buffer is zeroed before this returns."""
        buffer: bytearray | None = None
        scope = contextlib.ExitStack()
        try:
            if info.protected_authentication_path:
                secret: object = pkcs11.PROTECTED_AUTH
                logger.debug("C_Login on slot %s through the PIN pad", info.slot_id)
            else:
                buffer = pin()
                if not isinstance(buffer, bytearray):
                    # Anything else cannot be wiped; refusing keeps callers honest.
                    raise TypeError("a PinSource must return a bytearray")
                if not _pin_well_formed(buffer):
                    raise InvalidInput(
                        f"the PIN must be {PIN_MIN_LENGTH} to {PIN_MAX_LENGTH} digits; "
                        "nothing was sent to the card"
                    )
                secret = _PinBuffer(buffer)
                # While it is in use the log layer scrubs the PIN (from a keyed hash, no copy).
                scope.enter_context(pin_scope(buffer))
                logger.debug("C_Login on slot %s", info.slot_id)
            # A PIN that arrives after the deadline (a slow person) is dropped, not sent.
            _checkpoint(deadline, cancel, "logging in")
            with self._lock:
                try:
                    token = handle.slot.get_token()
                    return token.open(user_pin=secret)
                except p11e.PKCS11Error as exc:
                    # Read the flags for tries-left first: a reinitialised module (or SoftHSM2)
                    # may not keep them.
                    error = self._login_error(exc, handle)
                    self._release_leaked_session()
                    raise error from exc
        finally:
            if buffer is not None and isinstance(buffer, bytearray):
                _wipe(buffer)
            scope.close()

    def _login_error(self, exc: p11e.PKCS11Error, handle: TokenHandle) -> CardError:
        ckr = _ckr(exc)
        logger.info("C_Login on slot %s failed: %s", handle.info.slot_id, _ckr_name(ckr))
        if ckr == CKR_VENDOR_PIN_TWO_TRIES_LEFT:
            return PinIncorrect("wrong PIN; 2 tries left", tries_left=2)
        if ckr == CKR_VENDOR_PIN_ONE_TRY_LEFT:
            return PinIncorrect(
                "wrong PIN; 1 try left: another wrong PIN locks the card", tries_left=1
            )
        if ckr == CKR_PIN_INCORRECT:
            # The module updates the flags after the failure; read them again (no PIN involved).
            try:
                after = self._token_info(handle.slot)
            except CardError:
                return PinIncorrect("wrong PIN")
            if after.pin_locked:
                return PinBlocked("wrong PIN; the card's PIN is now locked")
            if after.pin_final_try:
                return PinIncorrect(
                    "wrong PIN; 1 try left: another wrong PIN locks the card", tries_left=1
                )
            if after.pin_count_low:
                return PinIncorrect("wrong PIN; few tries are left", tries_left=None)
            return PinIncorrect("wrong PIN")
        if ckr == CKR_PIN_LOCKED:
            return PinBlocked("the card's PIN is locked")
        if ckr in (CKR_PIN_LEN_RANGE, CKR_PIN_INVALID):
            return InvalidInput("the card refused the PIN's length or characters")
        if ckr in (CKR_USER_ALREADY_LOGGED_IN, CKR_USER_ANOTHER_ALREADY_LOGGED_IN):
            # Logged in by someone else: signing now would skip checking this PIN.
            return ReaderBusy("the card is already logged in by another program; not signing")
        if ckr == CKR_ARGUMENTS_BAD and handle.info.protected_authentication_path:
            return CardNotSupported("the PKCS#11 module does not accept PIN-pad login")
        return _map_error(exc, "C_Login")

    def _sign_in_session(self, session: P11Session, key_id: bytes, data: bytes) -> bytes:
        keys = list(
            session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
        )
        if not keys:
            raise CardDataInvalid(
                "the card holds the certificate but no private key with its CKA_ID"
            )
        if len(keys) > 1:
            raise CardDataInvalid("several private keys share the certificate's CKA_ID")
        key = cast(P11Key, keys[0])
        return bytes(key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))

    def _close(self, session: P11Session, slot_id: int) -> None:
        """C_Logout + C_CloseSession. A failure is logged, never raised over the real outcome."""
        with self._lock:
            try:
                session.close()
            except p11e.PKCS11Error as exc:
                logger.warning(
                    "closing the session on slot %s failed: %s", slot_id, _ckr_name(_ckr(exc))
                )
                # python-pkcs11 skips C_CloseSession when C_Logout fails.
                self._release_leaked_session()

    def _release_leaked_session(self) -> None:
        """Reinitialise the module to close a session python-pkcs11 lost (see the module docstring).

        Called with the library lock held. No session is kept open across steps except the one
        signature in progress (one per module path), so this closes nothing anyone still uses.
        """
        if self._lib is None:
            return
        try:
            self._lib.reinitialize()
        except p11e.PKCS11Error as exc:
            logger.warning("reinitialising the PKCS#11 module failed: %s", _ckr_name(_ckr(exc)))
            self._lib = None  # load again on next use

    def _match_certificate(self, slot: P11Slot, cert_der: bytes) -> TokenHandle | None:
        token = slot.get_token()
        session = token.open()
        try:
            for obj in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE}):
                if bytes(obj[Attribute.VALUE]) == cert_der:
                    key_id = bytes(obj[Attribute.ID] or b"")
                    if not key_id:
                        raise CardDataInvalid("the certificate object on the card has no CKA_ID")
                    return TokenHandle(TokenInfo.of(slot.slot_id, token), key_id, slot)
            return None
        finally:
            session.close()

    def _token_info(self, slot: P11Slot) -> TokenInfo:
        return self._locked("C_GetTokenInfo", lambda: TokenInfo.of(slot.slot_id, slot.get_token()))

    def _slots(self) -> list[P11Slot]:
        lib = self._library()
        return self._locked("C_GetSlotList", lambda: list(lib.get_slots(token_present=True)))

    def _library(self) -> P11Library:
        with self._lock:
            if self._lib is None:
                try:
                    self._lib = self._loader(self.module_path)
                except Pkcs11ModuleMissing:
                    raise
                except (RuntimeError, OSError) as exc:  # PKCS11Error is a RuntimeError
                    raise Pkcs11ModuleMissing(
                        f"cannot load the PKCS#11 module {self.module_path}: {exc}"
                    ) from exc
                logger.debug("PKCS#11 module %s loaded", self.module_path)
            return self._lib

    def _locked(self, step: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step's PKCS#11 calls under the module lock, mapping python-pkcs11's errors."""
        with self._lock:
            try:
                return fn(*args)
            except p11e.PKCS11Error as exc:
                raise _map_error(exc, step) from exc


class _PinBuffer:
    """Gives python-pkcs11 our bytearray where it expects a ``str``.

    python-pkcs11 (0.7 to 0.10) does ``pin = user_pin.encode('utf-8')`` and hands ``pin`` to
    C_Login as a ``char *``. Cython's conversion accepts a bytearray, so answering ``encode`` with
    the caller's own buffer means no immutable copy of the PIN is ever made on our side, and
    zeroing the buffer afterwards really removes it. A python-pkcs11 that stops calling ``encode``
    fails loudly (TypeError), and the integration tests would catch it.
    """

    __slots__ = ("_buffer",)

    def __init__(self, buffer: bytearray) -> None:
        self._buffer = buffer

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytearray:
        return self._buffer

    def __repr__(self) -> str:
        return "<PIN redacted>"

    __str__ = __repr__


def _pin_well_formed(buffer: bytearray) -> bool:
    # Byte by byte, so no str or bytes copy of the PIN is made just to check it.
    return PIN_MIN_LENGTH <= len(buffer) <= PIN_MAX_LENGTH and all(
        0x30 <= b <= 0x39 for b in buffer
    )


def _wipe(buffer: bytearray) -> None:
    for i in range(len(buffer)):
        buffer[i] = 0


def _checkpoint(deadline: float | None, cancel: threading.Event | None, step: str) -> None:
    if cancel is not None and cancel.is_set():
        raise OperationCancelled(f"cancelled before {step}")
    if deadline is not None and time.monotonic() >= deadline:
        raise OperationTimeout(f"timed out before {step}")


def _require_signing_certificate(cert_der: bytes) -> None:
    """moica.md §4.2 step 2: only the signing certificate's key may sign."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise InvalidInput("the signing certificate is not a DER X.509 certificate") from exc
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return  # no keyUsage: any use is allowed (RFC 5280 §4.2.1.3)
    if not usage.digital_signature:
        raise InvalidInput(
            "the certificate's key usage does not include digitalSignature; use the card's "
            "signing certificate"
        )


def _ckr(exc: BaseException) -> int | None:
    code = _CKR_OF_EXCEPTION.get(type(exc))
    if code is not None:
        return code
    match = _UNMAPPED_RE.search(str(exc))
    return int(match.group(1), 16) if match else None


def _ckr_name(ckr: int | None) -> str:
    if ckr is None:
        return "unknown error"
    if ckr in _CKR_NAMES:
        return _CKR_NAMES[ckr]
    if ckr >= CKR_VENDOR_DEFINED:
        return f"CKR_VENDOR_DEFINED+0x{ckr - CKR_VENDOR_DEFINED:X}"
    return f"CKR 0x{ckr:X}"


def _map_error(exc: BaseException, step: str) -> CardError:
    """python-pkcs11's exception from any step other than C_Login, as a cardd error."""
    ckr = _ckr(exc)
    name = _ckr_name(ckr)
    logger.debug("%s failed: %s", step, name)
    if ckr in _CKR_GONE:
        return CardRemoved(f"the card went away during {step} ({name})")
    if ckr == CKR_FUNCTION_CANCELED:
        return UserCancelled(f"cancelled on the reader during {step}")
    if ckr == CKR_PIN_LOCKED:
        return PinBlocked("the card's PIN is locked")
    if ckr in _CKR_UNSUPPORTED:
        return CardNotSupported(
            f"the card or its PKCS#11 module cannot do this ({name} during {step})"
        )
    if ckr == CKR_DEVICE_ERROR:
        return CardMute(f"the card or reader failed during {step} ({name})")
    return CardError(f"the PKCS#11 module failed during {step} ({name})")


def _slot_id(slot: Any) -> object:
    return getattr(slot, "slot_id", "?")


_PIN_FLAG_NAMES = (
    (CKF_PROTECTED_AUTHENTICATION_PATH, "CKF_PROTECTED_AUTHENTICATION_PATH"),
    (CKF_USER_PIN_COUNT_LOW, "CKF_USER_PIN_COUNT_LOW"),
    (CKF_USER_PIN_FINAL_TRY, "CKF_USER_PIN_FINAL_TRY"),
    (CKF_USER_PIN_LOCKED, "CKF_USER_PIN_LOCKED"),
)


def flag_names(flags: int) -> list[str]:
    """Names of the PIN-related flags set in ``flags``, for diagnostics (``cardd diag``)."""
    return [name for bit, name in _PIN_FLAG_NAMES if flags & bit]
