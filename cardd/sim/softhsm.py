# SPDX-License-Identifier: Apache-2.0
"""SoftHSM2 tokens shaped like a citizen certificate card, for tests and demos (simulation.md §6).

A token gets a test citizen's (:mod:`cardd.sim.testpki`) two key pairs and certificates, paired by
CKA_ID the way the card's middleware pairs them:

======================  ==========  ==============================================
object                  CKA_ID      from
======================  ==========  ==============================================
signing key + cert      ``SIGN``    ``identity.signing`` (digitalSignature)
encryption key + cert   ``KEYX``    ``identity.encryption`` (keyEncipherment, ...)
======================  ==========  ==============================================

Provisioning runs ``softhsm2-util`` and ``pkcs11-tool`` as subprocesses with ``SOFTHSM2_CONF`` in
their environment only, so this process's PKCS#11 state is never touched. Tokens are selected by
label, never by slot number: SoftHSM2 moves an initialised token to a new, large slot id.

**The environment variable must be set before the PKCS#11 library is initialised in a process.**
SoftHSM2 reads ``SOFTHSM2_CONF`` and lists its token directory at ``C_Initialize`` only, and
python-pkcs11 initialises a module once per process. So: provision every token a test needs
first, in one directory (several tokens may share it), then set :meth:`SoftHsmToken.env` in
``os.environ``, then create the signer, or call
:meth:`cardd.moica.pkcs11.Pkcs11Signer.reload` if the module may already be initialised.

Test material only: the PINs are passed on the command line (visible in ``ps``) and the private
keys are written, briefly and mode 0600, to the token directory for import.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cardd.sim.testpki import CitizenIdentity, IssuedCertificate

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
#: CKA_ID of the signing key and certificate: ASCII "SIGN" (moica.md §4.2).
SIGNING_KEY_ID = bytes.fromhex("5349474e")
#: CKA_ID of the encryption key and certificate: ASCII "KEYX".
ENCRYPTION_KEY_ID = bytes.fromhex("4b455958")
DEFAULT_LABEL = "cardd-test"
DEFAULT_PIN = "123456"
DEFAULT_SO_PIN = "12345678"
CONF_NAME = "softhsm2.conf"

#: MOICA's PIN policy, so tests exercise the same checks real cards get (SoftHSM2 allows 4–255).
_PIN_RE = re.compile(r"[0-9]{6,8}")
#: CK_TOKEN_INFO.label is 32 bytes of UTF-8, space padded.
_MAX_LABEL_BYTES = 32
_TOOL_TIMEOUT = 30.0


class SoftHsmError(RuntimeError):
    """A SoftHSM2 tool failed; the message carries its stderr (which never echoes PINs)."""


@dataclass(frozen=True, kw_only=True)
class SoftHsmToken:
    """One provisioned token. ``pin`` and ``identity`` stay out of ``repr`` (logs, test output)."""

    conf_path: Path
    module_path: str = SOFTHSM_MODULE
    label: str
    pin: str = field(repr=False)
    identity: CitizenIdentity = field(repr=False)

    def env(self) -> dict[str, str]:
        """What a process (or ``os.environ``, before C_Initialize) needs to see this token."""
        return {"SOFTHSM2_CONF": str(self.conf_path)}

    @property
    def signing_cert_der(self) -> bytes:
        return self.identity.signing.der()

    def pin_source(self) -> Callable[[], bytearray]:
        """A :data:`cardd.moica.pkcs11.PinSource` that answers this token's PIN each time."""
        pin = self.pin
        return lambda: bytearray(pin, "ascii")


def softhsm_unusable() -> str | None:
    """Why SoftHSM2 tokens cannot be made here, or None when they can (tests skip on a reason)."""
    if not os.path.isfile(SOFTHSM_MODULE):
        return f"SoftHSM2 module not found at {SOFTHSM_MODULE} (apt install softhsm2)"
    for tool, package in (("softhsm2-util", "softhsm2"), ("pkcs11-tool", "opensc")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt install {package})"
    return None


def write_config(directory: Path) -> Path:
    """``directory/softhsm2.conf`` with its token store in ``directory/tokens``; idempotent."""
    directory = Path(directory)
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / CONF_NAME
    if not conf.exists():
        conf.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
            encoding="utf-8",
        )
    return conf


def provision_token(
    identity: CitizenIdentity,
    directory: Path,
    *,
    label: str = DEFAULT_LABEL,
    pin: str = DEFAULT_PIN,
    so_pin: str = DEFAULT_SO_PIN,
    include_encryption: bool = True,
    module_path: str = SOFTHSM_MODULE,
) -> SoftHsmToken:
    """Initialise a token labelled ``label`` in ``directory``'s store and load ``identity`` into it.

    Several tokens (different labels) may be provisioned into one directory; they then share one
    ``SOFTHSM2_CONF``, which is what a process that must see them all needs (module docstring).
    """
    if not _PIN_RE.fullmatch(pin):
        raise ValueError("pin must be 6 to 8 digits (MOICA's policy)")
    if not so_pin or len(so_pin) < 4:
        raise ValueError("so_pin must be at least 4 characters")
    if not label or len(label.encode("utf-8")) > _MAX_LABEL_BYTES:
        raise ValueError(f"label must be 1 to {_MAX_LABEL_BYTES} UTF-8 bytes")
    conf = write_config(directory)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    if label in _token_labels(env):
        raise ValueError(f"a token labelled {label!r} already exists in {directory}")
    _run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            pin,
        ],
        env,
    )
    _load(identity.signing, SIGNING_KEY_ID, "SIGN", label, pin, Path(directory), env, module_path)
    if include_encryption:
        _load(
            identity.encryption,
            ENCRYPTION_KEY_ID,
            "KEYX",
            label,
            pin,
            Path(directory),
            env,
            module_path,
        )
    return SoftHsmToken(
        conf_path=conf, module_path=module_path, label=label, pin=pin, identity=identity
    )


def _load(
    issued: IssuedCertificate,
    key_id: bytes,
    object_label: str,
    token_label: str,
    pin: str,
    directory: Path,
    env: dict[str, str],
    module_path: str,
) -> None:
    """The private key (with its public half) and the certificate, under one CKA_ID."""
    work = directory / f".import-{os.getpid()}-{key_id.hex()}"
    work.mkdir(mode=0o700)
    try:
        key_file = work / "key.p8"
        cert_file = work / "cert.der"
        # softhsm2-util --import reads PEM PKCS#8 only: DER fails with "Could not read the
        # PKCS#8 file" (SoftHSM 2.6.1).
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(issued.key_pkcs8_pem())
        cert_file.write_bytes(issued.der())
        _run(
            [
                "softhsm2-util",
                "--import",
                str(key_file),
                "--token",
                token_label,
                "--label",
                object_label,
                "--id",
                key_id.hex(),
                "--pin",
                pin,
            ],
            env,
        )
        _run(
            [
                "pkcs11-tool",
                "--module",
                module_path,
                "--token-label",
                token_label,
                "--login",
                "--pin",
                pin,
                "--write-object",
                str(cert_file),
                "--type",
                "cert",
                "--id",
                key_id.hex(),
                "--label",
                object_label,
            ],
            env,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _token_labels(env: dict[str, str]) -> set[str]:
    out = _run(["softhsm2-util", "--show-slots"], env)
    return {m.group(1).strip() for m in re.finditer(r"^\s*Label:\s*(.*?)\s*$", out, re.MULTILINE)}


def _run(argv: list[str], env: dict[str, str]) -> str:
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SoftHsmError(f"{argv[0]} could not run: {exc.__class__.__name__}") from None
    if done.returncode != 0:
        # argv holds PINs: report the tool and what it said, never the command line.
        detail = (done.stderr or done.stdout).strip()
        raise SoftHsmError(f"{argv[0]} failed (exit {done.returncode}): {detail}")
    return done.stdout
