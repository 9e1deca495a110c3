"""The page, in a real headless Chromium: pick versions, press the button, watch the line move,
get the links and the TCP address, be warned, and see the end.

Debian's ``chromium`` is driven through playwright's Python package pointed at
``/usr/bin/chromium`` (no browser is downloaded); ``make test`` installs it when missing.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from controllers.api.expiry import EXPIRY_PREFIX
from reconciler.clients.consul import ConsulClient
from tests.integration.frontdoor.helpers import PAGE, REQ, base_url, intake, page, routes
from tests.integration.helpers import clients_config

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 20_000


@pytest.fixture
async def browser(tmp_path: Path):
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is not installed: run `make browser` (Debian package chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.mark.timeout(120)
async def test_press_the_button_wait_get_links_be_warned_and_end(
    consul_server, browser, tmp_path
) -> None:
    from playwright.async_api import expect

    async with (
        ConsulClient(clients_config(consul_server.address).consul) as consul,
        intake(consul_server.address) as running,
    ):
        await consul.kv_put(REQ + "bob", b"{}")
        tab = await browser.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        await tab.goto(base_url(running) + "/")
        await expect(tab.locator("#start")).to_be_enabled()
        await expect(tab.locator("#core-version option")).to_have_count(1)
        await tab.fill("#user-id", "ada")
        await tab.select_option("#hmi-type", "generic")
        await tab.click("#start")
        await expect(tab.locator("#progress")).to_be_visible()
        _, stored = await consul.kv_get(REQ + "ada")
        assert json.loads(stored.value)["hmi"] == {"type": "generic", "version": "master"}

        state = tab.locator("#state")
        await expect(state).to_have_text("You are in line.")
        await consul.kv_put(PAGE, page(waiting=["bob", "ada"]))
        await expect(state).to_have_text("You are number 2 in line (2 waiting).")
        await consul.kv_delete(REQ + "bob")
        await consul.kv_put(PAGE, page(waiting=["ada"]))
        await expect(state).to_have_text("You are next in line.")
        await consul.kv_put(PAGE, page(claimed=["ada"]))
        await expect(state).to_have_attribute("data-state", "starting")
        await consul.kv_put("haproxy/domainName", b"manticore.test")
        await consul.kv_put("haproxy/mainPort", b"8080")
        await consul.kv_put("haproxy/data/ada", routes(core_port=20007))
        await expect(state).to_have_attribute("data-state", "ready")
        link = tab.locator("#hmi-link")
        await expect(link).to_have_attribute("href", "http://" + "h" * 16 + ".manticore.test:8080")
        await expect(tab.locator("#core-tcp")).to_have_text("manticore.test:20007")
        await expect(tab.locator("#broker-url")).to_have_text(
            "ws://" + "b" * 16 + ".manticore.test:8080"
        )
        await expect(tab.locator("#warning")).to_be_hidden()

        now = dt.datetime.now(dt.UTC)
        record = {
            "started_at": (now - dt.timedelta(seconds=600)).isoformat(),
            "warn_at": now.isoformat(),
            "expires_at": (now + dt.timedelta(seconds=90)).isoformat(),
            "warned_at": now.isoformat(),
        }
        await consul.kv_put(EXPIRY_PREFIX + "ada", json.dumps(record).encode())
        await expect(tab.locator("#warning")).to_be_visible()
        await expect(tab.locator("#countdown")).to_contain_text("min")
        await tab.screenshot(path=str(tmp_path / "expiring.png"), full_page=True)

        await consul.kv_delete(REQ + "ada")
        await expect(tab.locator("#ended")).to_be_visible()
        await expect(tab.locator("#progress")).to_be_hidden()


@pytest.mark.timeout(120)
async def test_leaving_from_the_page_deletes_the_request(consul_server, browser) -> None:
    from playwright.async_api import expect

    async with (
        ConsulClient(clients_config(consul_server.address).consul) as consul,
        intake(consul_server.address) as running,
    ):
        tab = await browser.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        await tab.goto(base_url(running) + "/")
        await expect(tab.locator("#start")).to_be_enabled()
        await tab.fill("#user-id", "cy")
        await tab.click("#start")
        await expect(tab.locator("#state")).to_have_text("You are in line.")
        await tab.click("#leave")
        await expect(tab.locator("#ended-text")).to_contain_text("You left")
        _, entry = await consul.kv_get(REQ + "cy")
        assert entry is None
        # A refused request is explained on the page, not lost in the console.
        await tab.click("#again")
        await tab.fill("#user-id", "not/an/id")
        await tab.evaluate("document.getElementById('user-id').removeAttribute('pattern')")
        await tab.click("#start")
        await expect(tab.locator("#error")).to_contain_text("Could not ask for a core")
