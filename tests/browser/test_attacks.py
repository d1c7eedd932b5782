# SPDX-License-Identifier: Apache-2.0
"""Browser attacks on cardd, in headless Chromium.

A page on an origin cardd does not allow (another local port) tries every way a browser page can
reach cardd: fetch with JSON (preflighted), a text/plain POST (no preflight), a no-cors POST, a
form POST, EventSource, WebSocket, an image tag and importing the client. Each is refused, and
the daemon's own event stream shows that no card operation started. The relying page (an
allowed origin) cannot read or frame cardd's PIN page.
"""

from __future__ import annotations

import base64
import secrets

import pytest

from tests.browser.conftest import PIN, shot
from tests.helpers import READER0

pytestmark = [pytest.mark.pcsc, pytest.mark.browser]

NONCE = base64.b64encode(b"\x01" * 32).decode()

ATTACK_PAGE = """<!doctype html><meta charset="utf-8"><title>running</title>
<h1>not a library</h1>
<iframe name="sink" id="sink"></iframe>
<form id="f" method="post" action="CARDD/v1/moica/authenticate" enctype="text/plain" target="sink">
<input name='{"nonce":"NONCE","x":"' value='"}'></form>
<script>
const C = "CARDD";
const results = {};
async function attempt(name, fn) {
  try { results[name] = await fn(); } catch (e) { results[name] = "refused"; }
}
async function run() {
  await attempt("fetchJson", async () => {
    const r = await fetch(C + "/v1/moica/read", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: "{}"});
    return "read " + r.status;
  });
  await attempt("textPlain", async () => {
    const r = await fetch(C + "/v1/moica/authenticate", {method: "POST",
      headers: {"Content-Type": "text/plain"}, body: '{"nonce": "NONCE"}'});
    return "read " + r.status;
  });
  await attempt("noCors", async () => {
    const r = await fetch(C + "/v1/moica/read", {method: "POST", mode: "no-cors", body: "{}"});
    return r.type;
  });
  await attempt("form", () => new Promise((ok) => {
    document.getElementById("sink").onload = () => ok("submitted");
    document.getElementById("f").submit();
  }));
  await attempt("eventSource", () => new Promise((ok) => {
    const es = new EventSource(C + "/v1/events");
    es.onopen = () => { es.close(); ok("open"); };
    es.onmessage = () => { es.close(); ok("message"); };
    es.onerror = () => { const s = es.readyState; es.close(); ok(s === 2 ? "refused" : "error " + s); };
  }));
  await attempt("webSocket", () => new Promise((ok) => {
    const ws = new WebSocket(C.replace("http:", "ws:") + "/v1/ws");
    ws.onopen = () => { ws.close(); ok("open"); };
    ws.onmessage = () => ok("message");
    ws.onclose = () => ok("refused");
  }));
  await attempt("image", () => new Promise((ok) => {
    const img = new Image();
    img.onload = () => ok("loaded " + img.width);
    img.onerror = () => ok("refused");
    img.src = C + "/v1/readers";
  }));
  await attempt("client", async () => { await import(C + "/v1/client/cardd.js"); return "loaded"; });
  document.title = "done";
}
run();
</script>
"""


def test_a_site_that_is_not_allowed_gets_nothing(world, context, moica_card, event_tap):
    (world.evil_dir / "attack.html").write_text(
        ATTACK_PAGE.replace("CARDD", world.cardd).replace("NONCE", NONCE), encoding="utf-8"
    )
    before = len(event_tap.events)
    page = context.new_page()
    page.goto(world.evil + "/attack.html")
    page.wait_for_function("document.title === 'done'")
    results = page.evaluate("results")
    shot(page, "20-attack-page")
    assert results == {
        "fetchJson": "refused",  # preflight refused: no CORS grant
        "textPlain": "refused",  # sent without preflight, refused (403), unreadable
        "noCors": "refused",  # sent; the answer's Cross-Origin-Resource-Policy blocks even
        # the opaque response
        "form": "submitted",  # the browser sent it; cardd answered 403 (below: nothing ran)
        "eventSource": "refused",
        "webSocket": "refused",
        "image": "refused",
        "client": "refused",
    }, results
    # Nothing reached the card: a marker operation of our own is the first operation the
    # daemon announces after the attack began.
    status, body = world.api("POST", "/v1/moica/read", {})
    assert status == 200, body
    finished = event_tap.wait_for(
        lambda e: e["type"] == "operation.finished" and e["operation"] == "moica.read"
    )
    seen = event_tap.events[before : event_tap.events.index(finished) + 1]
    started = [e["operation"] for e in seen if e["type"] == "operation.started"]
    assert started == ["moica.read"], seen
    _, readers = world.api("GET", "/v1/readers")
    assert not any(r["busy"] for r in readers["readers"])
    # and the daemon says why, in its log only
    log = world.cardd_log.read_text(errors="replace")
    assert f"refused origin '{world.evil}'" in log


def test_the_relying_page_cannot_read_or_frame_the_pin_page(world, context, moica_card):
    page = context.new_page()
    page.goto(world.site + "/")
    page.wait_for_selector("body[data-cardd=ready]")
    op = secrets.token_urlsafe(16)
    with page.expect_popup() as popup_info:
        page.evaluate(
            """([cardd, op, nonce]) => {
                window.pinWindow = window.open(cardd + "/pin?op=" + op, "pin", "popup");
                window.auth = fetch(cardd + "/v1/moica/authenticate", {method: "POST",
                    headers: {"Content-Type": "application/json"},
                    body: JSON.stringify({nonce, pinPage: op})}).then((r) => r.json());
            }""",
            [world.cardd, op, NONCE],
        )
    popup = popup_info.value
    popup.wait_for_selector("body[data-state=waiting_pin]")
    assert popup.evaluate("window.opener") is None
    # COOP same-origin: the opener's handle is dead; it cannot reach the document
    handle = page.evaluate("""() => {
        let doc;
        try { doc = String(window.pinWindow.document.body.innerHTML.length); }
        catch (e) { doc = "blocked"; }
        return {closed: window.pinWindow.closed, doc};
    }""")
    assert handle == {"closed": True, "doc": "blocked"}
    # reading it with fetch() or framing it fails too (and does not disturb the open page)
    fetched = page.evaluate(
        """([cardd, op]) => fetch(cardd + "/pin?op=" + op)
        .then((r) => r.text().then((t) => [r.status, t.includes("data-secret")]),
              () => "refused")""",
        [world.cardd, op],
    )
    assert fetched in ("refused", [403, False]), fetched
    page.evaluate(
        """([cardd, op]) => new Promise((ok) => {
        const f = document.createElement("iframe");
        f.onload = () => ok(); f.src = cardd + "/pin?op=" + op; document.body.append(f);
    })""",
        [world.cardd, op],
    )
    framed = [f for f in page.frames if f is not page.main_frame]
    assert framed and all(f.query_selector("#app") is None for f in framed)
    shot(page, "21-pin-page-not-framed")
    # the real PIN window still works: the attempts did not take over its secret
    popup.fill("#pin", PIN)
    popup.click("#ok")
    token = page.evaluate("window.auth")
    assert token["format"] == "cardd-moica:1", token


def test_pin_endpoints_refuse_other_origins_and_wrong_secrets(world, context, moica_card):
    """The PIN page's own calls: only from cardd's origin, only with the page's secret."""
    op = secrets.token_urlsafe(16)
    page = context.new_page()
    page.goto(world.site + "/")
    page.wait_for_selector("body[data-cardd=ready]")
    with page.expect_popup() as popup_info:
        page.evaluate(
            """([cardd, op, nonce]) => {
                window.open(cardd + "/pin?op=" + op, "pin", "popup");
                window.auth = fetch(cardd + "/v1/moica/authenticate", {method: "POST",
                    headers: {"Content-Type": "application/json"},
                    body: JSON.stringify({nonce, pinPage: op})}).then((r) => r.json());
            }""",
            [world.cardd, op, NONCE],
        )
    popup = popup_info.value
    popup.wait_for_selector("body[data-state=waiting_pin]")
    # the allowed relying party itself may not cancel or answer for the person
    from_site = page.evaluate(
        """([cardd, op]) => fetch(cardd + "/v1/pin/" + op + "/cancel", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({secret: "x".repeat(43)})}).then((r) => r.status, () => "refused")""",
        [world.cardd, op],
    )
    assert from_site in (403, "refused")
    # cardd's own origin with a wrong secret: not found
    wrong = popup.evaluate(
        """(op) => fetch("/v1/pin/" + op + "/cancel", {method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({secret: "y".repeat(43)})}).then((r) => r.status)""",
        op,
    )
    assert wrong == 404
    assert popup.get_attribute("body", "data-state") == "waiting_pin"
    popup.click("#cancel")
    assert page.evaluate("window.auth")["error"]["code"] == "user_cancelled"
    status, _ = world.api("GET", "/v1/readers")
    assert status == 200
    world.wait_idle(READER0)
