# SPDX-License-Identifier: Apache-2.0
"""A demo library registration site on its own origin: cardd's JavaScript client in use.

``cardd demo-site --port 8080 --cardd http://127.0.0.1:7420`` serves the online registration
form of the seeds (NLPI 網路辦證, 北北基一證通用: 身分證字號, 姓名, 生日, e-mail, 電話, 地址, 密碼)
as the library's web site would, on ``http://127.0.0.1:8080``. That origin must be allowlisted
in cardd's configuration with the scopes ``moica`` and ``rfid:read``.

What it shows:

* **以自然人憑證驗證** (instant activation, seed 000): the site issues a nonce server-side
  (:class:`cardd.moica.verify.NonceStore`: 32 random bytes, single use, 5 minutes, bound to the
  browser's session cookie); the page calls ``cardd.moica.authenticate(nonce)`` (cardd's PIN
  window); the page posts the token; the site verifies it with
  :func:`cardd.moica.verify.verify_token` against its own origin, the nonce it issued and its
  configured trust, checking the last four ID characters against the typed ID. 姓名 is filled
  from the certificate, and an account registered with that ID and name is activated at once;
  without it the account waits for manual review (the "3 working days" path).
* **綁定悠遊卡／一卡通** (智慧借閱證): ``cardd.rfid.waitTap()``; the site keeps the chip number in
  the form it is configured for (default ``decLE``, the 10-digit little-endian 內碼 most library
  systems store) with the account.

Trust: the site trusts the MOICA-like CA certificates given with ``--trust-cert``. The demo
(scripts/demo.sh) gives it the test CA of the simulated card (tests/fixtures/moica), and the
page says so: this is not the real MOICA. Revocation is checked (OCSP, then CRL, required) when
``--crl-url`` names the CA's CRL; without it the site accepts tokens without a revocation check
(``allow-offline`` with no sources) and says so on the page.

Accounts live in SQLite (``--db``, in memory by default). The ID number is stored masked only;
the password is stored as a scrypt hash. The site's own API takes JSON from its own origin only
(Origin checked), so other sites cannot post to it.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from cardd.errors import CardError, IdNumberInvalid, InvalidInput, TokenError
from cardd.moica.trust import TrustStore
from cardd.moica.types import RevocationPolicy
from cardd.moica.verify import NonceStore, verify_token
from cardd.rfid.idnumber import mask_id, validate_id
from cardd.rfid.uid import UidForm

logger = logging.getLogger(__name__)

SESSION_COOKIE = "demo_sid"
_STATIC = resources.files("cardd.demo") / "static"


@dataclass(frozen=True)
class DemoSiteConfig:
    port: int = 8080
    host: str = "127.0.0.1"
    #: cardd's base URL, as pages call it
    cardd_url: str = "http://127.0.0.1:7420"
    #: this site's origin as browsers send it; the token must be signed for exactly this
    origin: str = ""
    trust_certs: tuple[Path, ...] = ()
    crl_urls: tuple[str, ...] = ()
    chip_form: UidForm = UidForm.DEC_LE
    db: str = ":memory:"

    @property
    def site_origin(self) -> str:
        return self.origin or f"http://{self.host}:{self.port}"


@dataclass
class Session:
    nonce: str | None = None
    #: the verified certificate holder: name, ID last four, and the ID the form had then
    verified: dict[str, str] | None = None
    chip: str | None = None
    created: float = field(default_factory=time.monotonic)


class DemoSite:
    def __init__(self, config: DemoSiteConfig) -> None:
        self.config = config
        self.nonces = NonceStore()
        self.sessions: dict[str, Session] = {}
        self.trust = _load_trust(config.trust_certs)
        self.revocation: Any = None
        self.policy = RevocationPolicy.ALLOW_OFFLINE
        if config.crl_urls:
            from cardd.moica.crl import CrlSource, CrlStore
            from cardd.moica.ocsp import OcspClient
            from cardd.moica.revocation import Revocation

            sources = [
                CrlSource(anchor.certificate, url)
                for anchor in self.trust.anchors
                for url in config.crl_urls
            ]
            state = Path(_state_dir())
            self.revocation = Revocation(OcspClient(), CrlStore(sources, state))
            self.policy = RevocationPolicy.REQUIRE
        self.db = sqlite3.connect(config.db)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, masked_id TEXT, "
            "id_hash TEXT UNIQUE, name TEXT, birthday TEXT, email TEXT, phone TEXT, address TEXT, "
            "password_hash TEXT, status TEXT, verified_by TEXT, chip TEXT, chip_form TEXT, "
            "created TEXT)"
        )

    # -- sessions -------------------------------------------------------------------------------

    def session(self, request: web.Request) -> tuple[str, Session]:
        sid = request.cookies.get(SESSION_COOKIE, "")
        found = self.sessions.get(sid)
        if found is None:
            sid = secrets.token_urlsafe(24)
            found = self.sessions[sid] = Session()
        return sid, found

    # -- routes ---------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        cfg = self.config
        trust_note = (
            "本示範網站信任的是模擬自然人憑證卡的「測試憑證機構」，不是內政部憑證管理中心（MOICA）。"
            if self.trust.anchors
            else "尚未設定信任的憑證機構：自然人憑證驗證將會失敗。"
        )
        revocation_note = (
            "憑證撤銷狀態以 OCSP／CRL 檢查。"
            if self.revocation is not None
            else "示範模式未檢查憑證撤銷狀態。"
        )
        page_config = {
            "carddUrl": cfg.cardd_url,
            "chipForm": cfg.chip_form.value,
            "origin": cfg.site_origin,
        }
        text = (
            _read("index.html")
            # a JSON data block is raw text: HTML escapes would stay, so make "<" harmless instead
            .replace("{{CONFIG}}", json.dumps(page_config).replace("<", "\\u003c"))
            .replace("{{TRUST_NOTE}}", html.escape(trust_note + revocation_note))
            .replace("{{ORIGIN}}", html.escape(cfg.site_origin))
            .replace("{{CARDD}}", html.escape(cfg.cardd_url))
        )
        resp = web.Response(
            text=text,
            content_type="text/html",
            charset="utf-8",
            headers=self._headers(html_page=True),
        )
        self._set_cookie(request, resp)
        return resp

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"app.js": "text/javascript", "site.css": "text/css"}
        if name not in types:
            raise web.HTTPNotFound()
        return web.Response(
            text=_read(name), content_type=types[name], charset="utf-8", headers=self._headers()
        )

    async def new_nonce(self, request: web.Request) -> web.Response:
        self._same_origin(request)
        sid, session = self.session(request)
        # one outstanding challenge per session: a new one replaces (and burns) the old
        if session.nonce is not None:
            self.nonces.consume(session.nonce, session=sid)
        session.nonce = self.nonces.issue(session=sid)
        resp = web.json_response({"nonce": session.nonce}, headers=self._headers())
        self._set_cookie(request, resp, sid)
        return resp

    async def verify(self, request: web.Request) -> web.Response:
        self._same_origin(request)
        sid, session = self.session(request)
        body = await _json(request)
        id_number = _valid_id(body.get("idNumber"))
        token = body.get("token")
        nonce, session.nonce = session.nonce, None
        # consumed before judging: a nonce is single use even when the token fails
        if nonce is None or not self.nonces.consume(nonce, session=sid):
            return _error(400, "nonce_expired", "驗證碼已失效，請再按一次「以自然人憑證驗證」。")
        try:
            result = verify_token(
                json.dumps(token),
                expected_origin=self.config.site_origin,
                nonce=nonce,
                trust=self.trust,
                revocation=self.revocation,
                policy=self.policy,
                id_number=id_number,
            )
        except TokenError as e:
            logger.info("token refused: %s (%s)", e.code, e.message)
            return _error(400, e.code, _TOKEN_MESSAGES.get(e.code, "自然人憑證驗證失敗。"))
        session.verified = {
            "name": result.holder_name,
            "idLast4": result.id_last4 or "",
            "idNumber": id_number,
        }
        return web.json_response(
            {
                "holderName": result.holder_name,
                "idLast4": result.id_last4,
                "serial": result.certificate_serial,
                "revocation": result.revocation_method,
            },
            headers=self._headers(),
        )

    async def bind_card(self, request: web.Request) -> web.Response:
        self._same_origin(request)
        _, session = self.session(request)
        body = await _json(request)
        uid = body.get("uid")
        form = self.config.chip_form.value
        if not isinstance(uid, dict) or not isinstance(uid.get(form), str):
            return _error(400, "invalid_input", "卡號資料不完整。")
        chip = uid[form]
        if not chip.isalnum() or len(chip) > 32:
            return _error(400, "invalid_input", "卡號格式不正確。")
        session.chip = chip
        return web.json_response({"chip": chip, "form": form}, headers=self._headers())

    async def register(self, request: web.Request) -> web.Response:
        self._same_origin(request)
        _, session = self.session(request)
        body = await _json(request)
        id_number = _valid_id(body.get("idNumber"))
        fields = {}
        for key, label, required, limit in _FORM_FIELDS:
            value = body.get(key, "")
            if not isinstance(value, str) or len(value) > limit:
                return _error(400, "invalid_input", f"{label}格式不正確。")
            value = value.strip()
            if required and not value:
                return _error(400, "invalid_input", f"請填寫{label}。")
            fields[key] = value
        password = fields.pop("password")
        if not (4 <= len(password) <= 10 and password.isalnum() and password.isascii()):
            return _error(400, "invalid_input", "密碼須為 4 到 10 碼英文或數字。")
        verified = session.verified
        activated = bool(
            verified and verified["idNumber"] == id_number and verified["name"] == fields["name"]
        )
        status = "activated" if activated else "pending_review"
        salt = secrets.token_bytes(16)
        pw_hash = (
            salt.hex() + ":" + hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1).hex()
        )
        id_hash = hashlib.sha256(("cardd-demo:" + id_number).encode()).hexdigest()
        try:
            cur = self.db.execute(
                "INSERT INTO accounts (masked_id, id_hash, name, birthday, email, phone, address, "
                "password_hash, status, verified_by, chip, chip_form, created) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    mask_id(id_number),
                    id_hash,
                    fields["name"],
                    fields["birthday"],
                    fields["email"],
                    fields["phone"],
                    fields["address"],
                    pw_hash,
                    status,
                    "moica" if activated else None,
                    session.chip,
                    self.config.chip_form.value if session.chip else None,
                    time.strftime("%Y-%m-%dT%H:%M:%S"),
                ),
            )
        except sqlite3.IntegrityError:
            return _error(409, "already_registered", "這個身分證字號已經申請過借閱證。")
        self.db.commit()
        session.verified = None
        session.chip = None
        return web.json_response(self._account(cur.lastrowid), status=201, headers=self._headers())

    async def accounts(self, request: web.Request) -> web.Response:
        self._same_origin(request)
        rows = self.db.execute("SELECT id FROM accounts ORDER BY id").fetchall()
        return web.json_response(
            {"accounts": [self._account(r[0]) for r in rows]}, headers=self._headers()
        )

    # -- helpers --------------------------------------------------------------------------------

    def _account(self, row_id: int | None) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT id, masked_id, name, status, verified_by, chip, chip_form, email FROM accounts "
            "WHERE id = ?",
            (row_id,),
        ).fetchone()
        keys = ("id", "maskedId", "name", "status", "verifiedBy", "chip", "chipForm", "email")
        return dict(zip(keys, row, strict=True))

    def _same_origin(self, request: web.Request) -> None:
        if request.method == "GET":  # browsers send no Origin on same-origin GETs
            if request.headers.get("Sec-Fetch-Site", "same-origin") != "same-origin":
                raise web.HTTPForbidden(text="cross-site request refused")
            return
        origin = request.headers.get("Origin")
        if origin not in (self.config.site_origin, f"http://{request.host}"):
            raise web.HTTPForbidden(text="cross-site request refused")
        if request.method == "POST" and request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="send JSON")

    def _set_cookie(
        self, request: web.Request, resp: web.StreamResponse, sid: str | None = None
    ) -> None:
        if sid is None:
            sid, _ = self.session(request)
        resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/")

    def _headers(self, *, html_page: bool = False) -> dict[str, str]:
        headers = {
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if html_page:
            cardd = self.config.cardd_url
            headers["Content-Security-Policy"] = (
                f"default-src 'none'; script-src 'self' {cardd}; connect-src 'self' {cardd}; "
                "style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
                "frame-ancestors 'none'"
            )
            headers["X-Frame-Options"] = "DENY"
        return headers


_FORM_FIELDS = (
    ("name", "姓名", True, 50),
    ("birthday", "生日", True, 10),
    ("email", "電子郵件", True, 200),
    ("phone", "電話", False, 30),
    ("address", "地址", True, 200),
    ("password", "密碼", True, 10),
)

_TOKEN_MESSAGES = {
    "id_mismatch": "自然人憑證與您填寫的身分證字號不符。",
    "signature_invalid": "簽章驗證失敗（網址或驗證碼不符）。",
    "untrusted_chain": "不是本網站信任的憑證機構所簽發的憑證。",
    "cert_expired": "自然人憑證已過期。",
    "cert_not_yet_valid": "自然人憑證尚未生效。",
    "revoked": "自然人憑證已被廢止。",
    "revocation_unknown": "目前無法確認憑證是否已被廢止，請稍後再試。",
    "wrong_key_usage": "這不是簽章用憑證。",
}


def _read(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def _state_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="cardd-demo-site-")


def _load_trust(paths: tuple[Path, ...]) -> TrustStore:
    from cryptography import x509

    certs = []
    for path in paths:
        data = Path(path).read_bytes()
        certs.append(
            x509.load_pem_x509_certificate(data)
            if data.startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
    return TrustStore(certs, False)


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(64 * 1024 + 1)
    if len(raw) > 64 * 1024:
        raise web.HTTPRequestEntityTooLarge(max_size=64 * 1024, actual_size=len(raw))
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise web.HTTPBadRequest(text="not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="not a JSON object")
    return body


def _valid_id(value: object) -> str:
    try:
        return validate_id(value if isinstance(value, str) else "").value
    except IdNumberInvalid:
        raise _Refused(400, "id_invalid", "身分證字號格式或檢查碼不正確。") from None


class _Refused(web.HTTPException):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False),
            content_type="application/json",
        )


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=status,
        dumps=lambda o: json.dumps(o, ensure_ascii=False),
    )


def create_site(config: DemoSiteConfig) -> web.Application:
    site = DemoSite(config)
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get("/", site.index)
    app.router.add_get("/static/{name}", site.static)
    app.router.add_post("/api/nonce", site.new_nonce)
    app.router.add_post("/api/moica/verify", site.verify)
    app.router.add_post("/api/card/bind", site.bind_card)
    app.router.add_post("/api/register", site.register)
    app.router.add_get("/api/accounts", site.accounts)
    app["site"] = site
    return app


def run(config: DemoSiteConfig) -> None:
    """Serve the demo site until interrupted (``cardd demo-site``)."""
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        raise InvalidInput("the demo site listens on loopback only")
    print(
        f"demo site: http://{config.host}:{config.port}/  (cardd at {config.cardd_url}; "
        f"allowlist {config.site_origin} in cardd's configuration)",
        flush=True,
    )
    web.run_app(
        create_site(config), host=config.host, port=config.port, print=None, access_log=None
    )


__all__ = ["CardError", "DemoSite", "DemoSiteConfig", "create_site", "run"]
