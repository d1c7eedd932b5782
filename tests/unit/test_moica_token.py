# SPDX-License-Identifier: Apache-2.0
"""The token format: building, strict parsing, signed data, nonce and origin rules.

Ports Web eID's ``AuthTokenStructureTest``, ``AuthTokenAlgorithmTest`` and the parsing half of
``AuthTokenCertificateTest`` (bridge-security.md §1.5) at the parser level; test_moica_verify.py
repeats them through ``verify_token``.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from cardd.errors import BadNonce, OriginMismatch, TokenError, UnsupportedFormat
from cardd.moica.token import (
    ALGORITHM,
    FORMAT,
    TOKEN_MAX_LENGTH,
    TOKEN_MIN_LENGTH,
    AuthToken,
    make_token,
    parse_token,
    signed_data,
    validate_nonce,
    validate_origin,
)
from cardd.sim.testpki import make_test_pki

ORIGIN = "https://library.example.tw"
NONCE = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 ASCII bytes
SIGNATURE = bytes(range(256))


@pytest.fixture(scope="module")
def cert_der() -> bytes:
    pki = make_test_pki()
    return pki.issue_citizen("王小明", "1234567890123456", "6789").signing.der()


@pytest.fixture(scope="module")
def token(cert_der: bytes) -> str:
    return make_token(cert_der, SIGNATURE, "cardd/0.1.0")


def _fields(token: str) -> dict[str, object]:
    return json.loads(token)


def _with(token: str, **changes: object) -> str:
    """The token with fields replaced (a value of ... removes the field)."""
    fields = _fields(token)
    for key, value in changes.items():
        if value is ...:
            fields.pop(key, None)
        else:
            fields[key] = value
    return json.dumps(fields)


def _code(exc: pytest.ExceptionInfo[TokenError]) -> str:
    return exc.value.code


# -- building and round trip --------------------------------------------------------------


def test_make_token_has_exactly_the_product_fields(token: str, cert_der: bytes) -> None:
    fields = _fields(token)
    assert list(fields) == [
        "format",
        "unverifiedCertificate",
        "algorithm",
        "signature",
        "appVersion",
    ]
    assert fields["format"] == FORMAT == "cardd-moica:1"
    assert fields["algorithm"] == ALGORITHM == "RS256"
    assert base64.b64decode(str(fields["unverifiedCertificate"])) == cert_der
    assert base64.b64decode(str(fields["signature"])) == SIGNATURE
    assert fields["appVersion"] == "cardd/0.1.0"
    assert " " not in token  # compact


def test_parse_round_trip(token: str, cert_der: bytes) -> None:
    parsed = parse_token(token)
    assert parsed.certificate_der == cert_der
    assert parsed.certificate.serial_number > 0
    assert parsed.signature == SIGNATURE
    assert (parsed.format, parsed.algorithm, parsed.app_version) == (FORMAT, "RS256", "cardd/0.1.0")


def test_parse_accepts_utf8_bytes(token: str) -> None:
    assert parse_token(token.encode()).signature == SIGNATURE


def test_auth_token_repr_leaves_out_certificate_and_signature(token: str) -> None:
    text = repr(parse_token(token))
    assert "signature=" not in text and "certificate" not in text


@pytest.mark.parametrize(
    ("cert", "sig", "version"),
    [
        (b"", SIGNATURE, "cardd/1"),
        (b"x", b"", "cardd/1"),
        (b"x", b"s", ""),
        (b"x", b"s", "v" * 201),
    ],
)
def test_make_token_refuses_empty_or_oversized_inputs(
    cert: bytes, sig: bytes, version: str
) -> None:
    with pytest.raises(ValueError):
        make_token(cert, sig, version)


def test_make_token_refuses_a_result_over_the_length_limit() -> None:
    with pytest.raises(ValueError, match="characters"):
        make_token(b"x" * 8000, SIGNATURE, "cardd/1")


# -- AuthTokenStructureTest ----------------------------------------------------------------


def test_null_token_fails() -> None:
    with pytest.raises(TokenError, match="null or too short") as exc:
        parse_token(None)  # type: ignore[arg-type]
    assert _code(exc) == "invalid_token"


def test_null_string_token_fails() -> None:
    with pytest.raises(TokenError, match="null or too short"):
        parse_token("null")


def test_too_short_token_fails() -> None:
    with pytest.raises(TokenError, match="too short"):
        parse_token("x" * (TOKEN_MIN_LENGTH - 1))


def test_too_long_token_fails() -> None:
    with pytest.raises(TokenError, match="too long"):
        parse_token("x" * (TOKEN_MAX_LENGTH + 1))


def test_too_long_bytes_token_fails_before_decoding() -> None:
    with pytest.raises(TokenError, match="too long"):
        parse_token(b"\xff" * (4 * TOKEN_MAX_LENGTH + 1))


def test_length_limits_are_inclusive() -> None:
    # Exactly 100 and 10,000 characters pass the length rule and fail later, as JSON.
    for length in (TOKEN_MIN_LENGTH, TOKEN_MAX_LENGTH):
        with pytest.raises(TokenError, match="not valid JSON"):
            parse_token("x" * length)


def test_garbage_token_fails() -> None:
    with pytest.raises(TokenError, match="not valid JSON") as exc:
        parse_token("garbage " * 20)
    assert _code(exc) == "invalid_token"


def test_non_utf8_bytes_fail() -> None:
    with pytest.raises(TokenError, match="UTF-8"):
        parse_token(b"\xff" * 200)


def test_non_string_token_fails() -> None:
    with pytest.raises(TokenError, match="string"):
        parse_token(12345)  # type: ignore[arg-type]


def test_json_that_is_not_an_object_fails(token: str) -> None:
    with pytest.raises(TokenError, match="not a JSON object"):
        parse_token(json.dumps([_fields(token)]))


def test_duplicate_keys_fail(token: str) -> None:
    duplicated = token[:-1] + ',"signature":"AAAA"}'
    with pytest.raises(TokenError, match="not valid JSON"):
        parse_token(duplicated)


def test_non_json_constants_fail(token: str) -> None:
    with pytest.raises(TokenError, match="not valid JSON"):
        parse_token(token[:-1] + ',"x":NaN}')


@pytest.mark.parametrize(
    "fmt",
    ["web-eid:1.0", "web-eid:1", "cardd-moica:2", "cardd-moica:1.1", "cardd-moica:10", "invalid"],
)
def test_unknown_format_version_fails(token: str, fmt: str) -> None:
    with pytest.raises(UnsupportedFormat) as exc:
        parse_token(_with(token, format=fmt))
    assert _code(exc) == "unsupported_format"


@pytest.mark.parametrize("fmt", [..., None, "", 1, ["cardd-moica:1"]])
def test_missing_or_non_string_format_is_invalid_token(token: str, fmt: object) -> None:
    with pytest.raises(TokenError) as exc:
        parse_token(_with(token, format=fmt))
    assert type(exc.value) is TokenError


def test_unknown_field_fails(token: str) -> None:
    with pytest.raises(TokenError, match="unknown token fields: origin"):
        parse_token(_with(token, origin=ORIGIN))


# -- AuthTokenAlgorithmTest ----------------------------------------------------------------


def test_algorithm_none_fails(token: str) -> None:
    with pytest.raises(TokenError, match="unsupported signature algorithm") as exc:
        parse_token(_with(token, algorithm="NONE"))
    assert _code(exc) == "invalid_token"


def test_algorithm_empty_fails(token: str) -> None:
    with pytest.raises(TokenError, match="'algorithm' field is missing, null or empty"):
        parse_token(_with(token, algorithm=""))


def test_algorithm_invalid_fails(token: str) -> None:
    with pytest.raises(TokenError, match="unsupported signature algorithm"):
        parse_token(_with(token, algorithm="\u0000\t\ninvalid"))


@pytest.mark.parametrize(
    "algorithm", ["rs256", "PS256", "ES256", "ES384", "RS384", "RS512", "HS256", 256]
)
def test_anything_but_rs256_fails(token: str, algorithm: object) -> None:
    with pytest.raises(TokenError, match="unsupported signature algorithm"):
        parse_token(_with(token, algorithm=algorithm))


@pytest.mark.parametrize("algorithm", [..., None])
def test_algorithm_missing_or_null_fails(token: str, algorithm: object) -> None:
    with pytest.raises(TokenError, match="'algorithm' field is missing"):
        parse_token(_with(token, algorithm=algorithm))


# -- certificate field (AuthTokenCertificateTest, parsing cases) ----------------------------


def test_certificate_field_missing_fails(token: str) -> None:
    with pytest.raises(TokenError, match="'unverifiedCertificate' field is missing, null or empty"):
        parse_token(_with(token, unverifiedCertificate=...))


def test_certificate_field_empty_fails(token: str) -> None:
    with pytest.raises(TokenError, match="'unverifiedCertificate' field is missing, null or empty"):
        parse_token(_with(token, unverifiedCertificate=""))


def test_certificate_field_null_fails(token: str) -> None:
    with pytest.raises(TokenError, match="missing, null or empty"):
        parse_token(_with(token, unverifiedCertificate=None))


def test_certificate_field_array_fails(token: str) -> None:
    with pytest.raises(TokenError, match="must be a base64 string") as exc:
        parse_token(_with(token, unverifiedCertificate=[1, 2, 3, 4]))
    assert _code(exc) == "invalid_token"


def test_certificate_field_number_fails(token: str) -> None:
    with pytest.raises(TokenError, match="must be a base64 string"):
        parse_token(_with(token, unverifiedCertificate=1234))


def test_certificate_field_not_base64_fails(token: str) -> None:
    with pytest.raises(TokenError, match="not base64"):
        parse_token(_with(token, unverifiedCertificate="This is not a certificate"))


def test_certificate_field_not_a_certificate_fails(token: str) -> None:
    not_cert = base64.b64encode(b"This is not a certificate").decode()
    with pytest.raises(TokenError, match="not an X.509 certificate"):
        parse_token(_with(token, unverifiedCertificate=not_cert))


def test_certificate_field_unpadded_base64_fails(token: str) -> None:
    # Web eID's own "not a certificate" value is unpadded; strict base64 refuses it earlier.
    with pytest.raises(TokenError, match="not base64"):
        parse_token(_with(token, unverifiedCertificate="VGhpcyBpcyBub3QgYSBjZXJ0aWZpY2F0ZQ"))


def test_certificate_with_line_breaks_fails(token: str, cert_der: bytes) -> None:
    wrapped = base64.encodebytes(cert_der).decode()  # 76-column lines, as PEM bodies have
    with pytest.raises(TokenError, match="not base64"):
        parse_token(_with(token, unverifiedCertificate=wrapped))


def test_certificate_with_trailing_bytes_fails(token: str, cert_der: bytes) -> None:
    padded = base64.b64encode(cert_der + b"\x00\x00").decode()
    with pytest.raises(TokenError, match="not an X.509 certificate"):
        parse_token(_with(token, unverifiedCertificate=padded))


def test_url_safe_base64_certificate_fails(token: str, cert_der: bytes) -> None:
    urlsafe = base64.urlsafe_b64encode(cert_der).decode()
    if urlsafe == base64.b64encode(cert_der).decode():
        pytest.skip("this certificate's base64 has no + or /")
    with pytest.raises(TokenError, match="not base64"):
        parse_token(_with(token, unverifiedCertificate=urlsafe))


# -- signature and appVersion fields ---------------------------------------------------------


@pytest.mark.parametrize("signature", [..., None, ""])
def test_signature_missing_or_empty_fails(token: str, signature: object) -> None:
    with pytest.raises(TokenError, match="'signature' field is missing"):
        parse_token(_with(token, signature=signature))


@pytest.mark.parametrize("signature", ["not base64!", 1234, ["AAAA"], "AAA"])
def test_signature_not_base64_fails(token: str, signature: object) -> None:
    with pytest.raises(TokenError, match="'signature'"):
        parse_token(_with(token, signature=signature))


@pytest.mark.parametrize("version", [..., None, "", 1, "v" * 201])
def test_app_version_must_be_a_short_string(token: str, version: object) -> None:
    with pytest.raises(TokenError, match="'appVersion'"):
        parse_token(_with(token, appVersion=version))


# -- signed data --------------------------------------------------------------------------


def test_signed_data_golden_vector() -> None:
    # Both halves checked against coreutils: printf '%s' <origin|nonce> | sha256sum
    assert signed_data(ORIGIN, NONCE).hex() == (
        "bd03a46be1a9be61934ee76886738ea3a25de0167a7988bb063fcac0fe36712d"
        "2cf5e6ec387461b4bf954f587ad4d957753fcbc48bf892b5e49996b90cf3b476"
    )


def test_signed_data_hashes_each_field_then_concatenates() -> None:
    data = signed_data(ORIGIN, NONCE)
    assert len(data) == 64
    assert data[:32] == hashlib.sha256(ORIGIN.encode()).digest()
    # the nonce is hashed as its base64 string, not as the decoded bytes
    assert data[32:] == hashlib.sha256(NONCE.encode()).digest()
    assert data[32:] != hashlib.sha256(base64.b64decode(NONCE)).digest()


def test_signed_data_separates_fields() -> None:
    a = signed_data("https://example.com", "ZXUxMjM0" + "A" * 40)
    b = signed_data("https://example.com.eu", "MTIzNA" + "A" * 42)
    assert a != b and a[:32] != b[:32]


def test_signed_data_refuses_bad_inputs() -> None:
    with pytest.raises(OriginMismatch):
        signed_data("https://example.com/path", NONCE)
    with pytest.raises(BadNonce):
        signed_data(ORIGIN, "short")


# -- nonce rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nonce",
    [
        NONCE,  # 44 characters, standard, padded
        "A" * 44,
        "A" * 128,
        base64.b64encode(bytes(range(48))).decode(),  # has + and /
        base64.urlsafe_b64encode(bytes(range(248, 256)) * 4).decode(),  # URL-safe, padded
        base64.urlsafe_b64encode(bytes(range(248, 256)) * 4).decode().rstrip("="),  # unpadded, 43+
        "12345678123456781234567812345678912356789124",  # Web eID's "wrong nonce": valid syntax
    ],
)
def test_valid_nonces(nonce: str) -> None:
    if len(nonce) < 44:
        nonce = nonce + "A" * (44 - len(nonce))
    assert validate_nonce(nonce) == nonce


@pytest.mark.parametrize(
    "nonce",
    [
        "A" * 43,  # too short (web-eid-app: < 44)
        "A" * 129,  # too long (web-eid-app: > 128)
        "",
        "A" * 43 + " ",
        " " + "A" * 44,
        "A" * 40 + "\nAAA",
        "A" * 42 + "+_",  # alphabets mixed
        "A" * 41 + "!==",
        "A" * 42 + "=A",  # padding not at the end
        "A" * 45,  # 45 base64 characters cannot be a whole number of bytes
        "A" * 43 + "==",  # wrong padding length
        "中" * 44,
    ],
)
def test_invalid_nonces(nonce: str) -> None:
    with pytest.raises(BadNonce) as exc:
        validate_nonce(nonce)
    assert exc.value.code == "bad_nonce"


@pytest.mark.parametrize("nonce", [None, 123, b"A" * 44])
def test_non_string_nonce(nonce: object) -> None:
    with pytest.raises(BadNonce):
        validate_nonce(nonce)


# -- origin rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com",
        "https://library.example.tw:8443",
        "https://localhost",
        "https://localhost:1",
        "https://a.b.c.d.example:65535",
        "https://xn--fiq228c.tw",  # punycode IDN
        "https://127.0.0.1",
        "https://192.168.0.10:8443",
        "https://[::1]",
        "https://[2001:db8::1]:8443",
        "https://" + "a" * 63 + ".example",
    ],
)
def test_valid_origins(origin: str) -> None:
    assert validate_origin(origin) == origin


@pytest.mark.parametrize(
    "origin",
    [
        "http://example.com",  # not https
        "wss://example.com",
        "HTTPS://example.com",
        "https://Example.com",  # browsers send lower case
        "https://example.com/",  # a path, even "/"
        "https://example.com/login",
        "https://example.com?x=1",
        "https://example.com#frag",
        "https://user@example.com",
        "https://user:pw@example.com",
        "https://example.com:443",  # browsers omit the default port
        "https://example.com:0",
        "https://example.com:65536",
        "https://example.com:08443",
        "https://example.com:",
        "https://example.com.",
        "https://.example.com",
        "https://exa_mple.com",
        "https://-example.com",
        "https://" + "a" * 64 + ".example",
        "https://",
        "https:// example.com",
        "https://example.com ",
        "https://例子.tw",  # IDNs arrive as punycode
        "https://1.2.3",  # browsers would send 1.2.0.3
        "https://256.1.1.1",
        "https://01.2.3.4",
        "https://example.123",
        "https://[::0001]",  # not canonical
        "https://[::1%25eth0]",
        "https://[zz::1]",
        "https://::1",
        "null",
        "",
        "https://" + "a." * 124 + "com",  # 255+ characters
    ],
)
def test_invalid_origins(origin: str) -> None:
    with pytest.raises(OriginMismatch) as exc:
        validate_origin(origin)
    assert exc.value.code == "origin_mismatch"


@pytest.mark.parametrize("origin", [None, 1, b"https://example.com"])
def test_non_string_origin(origin: object) -> None:
    with pytest.raises(OriginMismatch):
        validate_origin(origin)


def test_origin_length_limit_is_255() -> None:
    host = ".".join(["a" * 61] * 4)[: 255 - len("https://")]
    host = host.rstrip(".")
    origin = "https://" + host
    assert len(origin) <= 255
    assert validate_origin(origin) == origin
    with pytest.raises(OriginMismatch):
        validate_origin(origin + "a" * (256 - len(origin)))


def test_parse_token_result_is_frozen(token: str) -> None:
    parsed = parse_token(token)
    assert isinstance(parsed, AuthToken)
    with pytest.raises(AttributeError):
        parsed.algorithm = "NONE"  # type: ignore[misc]
