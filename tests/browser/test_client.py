# SPDX-License-Identifier: Apache-2.0
"""cardd.js in Chromium: loaded cross-origin by an allowed page, and its errors when cardd is not
running or does not allow the page."""

from __future__ import annotations

import pytest

from cardd.api.pinpage import CLIENT_JS
from tests.browser.conftest import free_port
from tests.helpers import READER0

pytestmark = [pytest.mark.pcsc, pytest.mark.browser]


def test_an_allowed_page_loads_the_client_from_cardd(world, context, moica_card):
    page = context.new_page()
    page.goto(world.site + "/")
    page.wait_for_selector("body[data-cardd=ready]")
    out = page.evaluate(
        """async (cardd) => {
            const mod = await import(cardd + "/v1/client/cardd.js");
            const c = mod.default;
            const events = c.events();
            const first = await events.next();
            events.close();
            const card = await c.moica.read();
            return {base: c.base, detect: await c.detect(), readers: await c.readers(),
                    first: first.value.type, holder: card.holderName};
        }""",
        world.cardd,
    )
    assert out["base"] == world.cardd  # found from where the module was loaded
    assert out["detect"]["running"] and out["detect"]["allowed"]
    assert any(r["name"] == READER0 and r["cardPresent"] for r in out["readers"])
    assert out["first"] == "hello"
    assert out["holder"] == "王小明"


def test_errors_when_cardd_is_not_running_or_the_site_is_not_allowed(world, context):
    # a site cardd does not allow, with its own copy of the client (the file cardd serves)
    (world.evil_dir / "cardd.js").write_text(CLIENT_JS, encoding="utf-8")
    (world.evil_dir / "client.html").write_text("<!doctype html><title>x</title>", "utf-8")
    page = context.new_page()
    page.goto(world.evil + "/client.html")
    out = page.evaluate(
        """async ([cardd, closed]) => {
            const { createClient, CarddError } = await import("/cardd.js");
            const grab = (p) => p.then(() => "ok", (e) => [e instanceof CarddError, e.code]);
            const refused = createClient({ base: cardd });
            const nobody = createClient({ base: closed });
            return {
                refusedDetect: await refused.detect(),
                refusedRead: await grab(refused.readers()),
                nobodyDetect: await nobody.detect(),
                nobodyRead: await grab(nobody.moica.read()),
            };
        }""",
        [world.cardd, f"http://127.0.0.1:{free_port()}"],
    )
    assert out["refusedDetect"] == {"running": True, "allowed": False}
    assert out["refusedRead"] == [True, "origin_not_allowed"]
    assert out["nobodyDetect"] == {"running": False, "allowed": False}
    assert out["nobodyRead"] == [True, "not_running"]


def test_the_client_script_is_served_only_to_allowed_sites(world):
    import urllib.error
    import urllib.request

    def get(origin: str | None):
        headers = {"Origin": origin} if origin else {}
        req = urllib.request.Request(world.cardd + "/v1/client/cardd.js", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers)

    status, headers = get(world.site)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == world.site
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert headers["Content-Type"].startswith("text/javascript")
    status, headers = get(world.evil)
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    status, headers = get(None)  # curl, a bundler: public code
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
