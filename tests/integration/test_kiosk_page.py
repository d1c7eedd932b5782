# SPDX-License-Identifier: Apache-2.0
"""The kiosk page in Debian's Chromium (headless, through Playwright): a tap through pcscd +
vpcd shows the decision; the library system going away shows the offline notice. Screenshots
go to tests/artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cardd.sim.sip2_server import Sip2TestServer
from tests.integration.kiosk_rig import KioskDaemon, easycard, lift, patrons, tap, uid_card

pytestmark = pytest.mark.pcsc

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/install.sh installs it)")
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def test_kiosk_page_shows_decisions_and_the_offline_notice(
    pcscd, vreaders, tmp_path, browser
):
    sip2 = Sip2TestServer(patrons(), accounts={"kiosk": "secret"}, institution="MAIN")
    await sip2.start()
    daemon = KioskDaemon(
        tmp_path,
        sip2.port,
        kiosk="anti_passback_seconds = 0\ndebounce_seconds = 0\ndisplay_seconds = 60\n",
    ).start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        await page.goto(daemon.url + "/kiosk")
        await page.wait_for_selector('body[data-link="open"]', timeout=15000)
        assert await page.text_content("#message") == "請感應借書證或掃描條碼"

        tap(vreaders, easycard())
        await page.wait_for_selector('body[data-state="allow"]', timeout=15000)
        lift(vreaders)
        assert await page.text_content("#message") == "歡迎光臨"
        assert await page.text_content("#screen-message") == "請於 11/20 前歸還圖書"
        assert await page.text_content("#card") == "******8099"
        assert await page.is_hidden("#offline")
        await page.screenshot(path=str(ARTIFACTS / "kiosk_allow.png"))

        tap(vreaders, uid_card("04D1D2D3"))  # not a patron
        await page.wait_for_selector('body[data-state="deny"]', timeout=15000)
        lift(vreaders)
        assert await page.text_content("#message") == "查無讀者資料，請洽櫃台"
        await page.screenshot(path=str(ARTIFACTS / "kiosk_deny.png"))

        await sip2.stop()
        tap(vreaders, easycard())
        await page.wait_for_selector('body[data-library="offline"]', timeout=15000)
        await page.wait_for_function(
            "document.getElementById('message').textContent === '系統離線中，請洽櫃台'",
            timeout=15000,
        )
        lift(vreaders)
        assert await page.is_visible("#offline")
        await page.screenshot(path=str(ARTIFACTS / "kiosk_offline.png"))

        assert problems == []  # the page's CSP let its own script and style load
        # The page's public stream is the only thing it gets: the full event stream and the
        # reader list stay closed to it (a browser request without a token).
        for path in ("/v1/events", "/v1/readers"):
            status = await page.evaluate("async (p) => (await fetch(p)).status", path)
            assert status in (401, 403), path
    finally:
        assert daemon.stop() == 0, daemon.log_text()
        await sip2.stop()
