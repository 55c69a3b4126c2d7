"""The live page in headless Chromium (Debian's, through Playwright) on a real stack: a crossing pair trades.

The browser is /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it). Without it the test fails,
saying so: a page nobody ran is not a tested page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import ConsoleMessage, Error, async_playwright, expect

from tests.integration.gateway_harness import gateway_stack

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
TIMEOUT_MS = 15_000


async def test_a_crossing_pair_placed_through_the_page_trades(
    nats_server: Any, nc: Any, js: Any, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) to test the page")
    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    async with gateway_stack(nats_server, nc, js, tmp_path) as stack, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))

            def console(msg: ConsoleMessage) -> None:
                if msg.type == "error":
                    problems.append(f"console: {msg.text}")

            page.on("console", console)
            await page.goto(stack.url + "/")
            await expect(page.locator("#conn")).to_have_text("connected")
            await expect(page.locator("#status")).to_contain_text("markets 0")

            await page.click("#create-pane summary")
            await page.fill("#new-market", "WEB")
            await page.click("#create-btn")
            await page.locator('#markets button[data-market="WEB"]').click()
            await expect(page.locator("#market-title")).to_have_text("WEB")
            await expect(page.locator("#at-seq")).to_contain_text("at ")

            await place(page, "alice", "sell", 100, 2)
            await expect(page.locator("#ladder tr.ask td.price")).to_have_text(["100"])
            await expect(page.locator("#ladder tr.ask td.ask")).to_have_text(["2"])
            await expect(page.locator("#orders tbody tr")).to_have_count(1)  # alice's open order

            await place(page, "bob", "buy", 100, 2)
            trade = page.locator("#tape tbody tr.trade")
            await expect(trade).to_have_count(1)
            await expect(trade.locator("td.price")).to_have_text("100")
            await expect(trade.locator("td.qty")).to_have_text("2")
            await expect(page.locator("#ladder tr.ask")).to_have_count(0)  # the ladder followed
            await expect(page.locator("#orders tbody tr")).to_have_count(0)  # bob's order filled at once

            # An order that rests, then is cancelled from the open-orders table.
            await place(page, "bob", "buy", 90, 1)
            await expect(page.locator("#ladder tr.bid td.price")).to_have_text(["90"])
            await page.locator("#orders tbody tr button.cancel").click()
            await expect(page.locator("#ladder tr.bid")).to_have_count(0)
        except Error:
            await page.screenshot(path=str(tmp_path / "page.png"))
            raise
        finally:
            await browser.close()
    assert problems == [], problems


async def place(page: Any, account: str, side: str, price: int, qty: int) -> None:
    await page.fill("#account", account)
    await page.locator("#account").dispatch_event("change")
    await page.select_option("#side", side)
    await page.fill("#price", str(price))
    await page.fill("#qty", str(qty))
    await page.click("#place-btn")
