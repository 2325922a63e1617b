"""The operator console in a real headless Chromium (Debian's, driven by Playwright; nothing is
downloaded), against a real cutover process in front of the demo platforms with demo traffic
flowing: sign in with the token, see the routes, move a weight, pull the brake and watch the
traffic go to old, find who/why in the audit list, read a diff, and do it by keyboard and on a
phone-sized screen.

With CUTOVER_SCREENSHOTS=1 the screenshots it takes are written to docs/console/ (the README
shows them); otherwise into the test's temp folder."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import ConsoleMessage, Page, ViewportSize, async_playwright
from ruamel.yaml import YAML

from proxy.demo.platforms import Simulators
from proxy.demo.traffic import TrafficStats, customers_of, generate
from tests.configs import REPO, demo_doc
from tests.e2e.test_control_e2e import platform_of
from tests.processes import CutoverProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = os.environ.get("CUTOVER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDE: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 375, "height": 812}
SCREENSHOTS = REPO / "docs" / "console"
EMAIL_CUSTOMER = "C-1010"  # not a pilot, no segment header: email / everyone
TIMEOUT_MS = 15_000


def for_docs() -> bool:
    return os.environ.get("CUTOVER_SCREENSHOTS") == "1"


def shots_dir(tmp_path: Path) -> Path:
    if for_docs():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path


@pytest.fixture
async def browser_page(tmp_path: Path) -> AsyncIterator[Page]:
    """A page in Debian's chromium with a fresh profile; fails (never skips) without it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (./dev test does)")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=WIDE,
        )
        page = context.pages[0] if context.pages else await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        def console_error(message: ConsoleMessage) -> None:
            # the wrong token the test types is refused on purpose: Chromium logs that 401
            if message.type == "error" and "status of 401" not in message.text:
                errors.append(message.text)

        page.on("console", console_error)
        try:
            yield page
        finally:
            await context.close()
        assert errors == [], f"the page logged errors: {errors}"


async def rate(page: Page, route: str, side: str) -> float:
    value = await page.get_attribute(f'section.route[data-route="{route}"]', f"data-rate-{side}")
    return float(value or 0)


async def span(page: Page) -> float:
    """How many seconds the contacts charts cover."""
    value = await page.get_attribute('section.route[data-route="contacts"]', "data-span")
    return float(value or 0)


async def accessible(page: Page, what: str) -> None:
    """axe-core's checks (WCAG 2 A/AA and best practices: names, labels, contrast, landmarks,
    ARIA) find nothing on what the page shows now."""
    results = await Axe().run(page)
    assert results.violations_count == 0, f"{what}: {results.generate_report()}"


async def active_key(page: Page) -> str | None:
    key = await page.evaluate("document.activeElement && document.activeElement.dataset.key")
    return str(key) if key is not None else None


async def focus_in_dialog(page: Page) -> bool:
    inside = await page.evaluate(
        "document.querySelector('dialog').contains(document.activeElement)"
    )
    return bool(inside)


async def test_operator_signs_in_moves_a_weight_rolls_back_and_reads_the_audit(
    sims: Simulators, cutover, http, browser_page, tmp_path: Path
):
    doc = demo_doc(sims)
    attachments = doc["routes"][2]
    assert attachments["name"] == "attachments"
    attachments["plan"] = {
        "steps": [{"weights": {"default": 0}}, {"weights": {"default": 0, "web": 5}}]
    }
    proxy = await cutover(doc, ids=sims)
    page = browser_page
    shots = shots_dir(tmp_path)
    stop = asyncio.Event()
    stats = TrafficStats()
    traffic = asyncio.ensure_future(  # noqa: TID251 - owned by this test, awaited below
        generate(proxy.url, customers_of(sims), rate=25, stats=stats, stop=stop)
    )
    try:
        await _scenario(page, proxy, http, shots)
    finally:
        stop.set()
        await traffic
    assert stats.failures == 0


async def _scenario(page: Page, proxy: CutoverProcess, http: aiohttp.ClientSession, shots: Path):
    # --- sign in: a wrong token is refused, the right one opens the console --------------------
    await page.goto(proxy.admin_url + "/console/")
    await page.wait_for_selector("#login-token")
    await accessible(page, "sign-in")
    await page.fill("#login-token", "not-the-token")
    await page.fill("#login-name", "alice")
    await page.press("#login-name", "Enter")
    await page.wait_for_selector("#login-error:has-text('refused')")
    await page.fill("#login-token", proxy.token)
    await page.press("#login-token", "Enter")
    await page.wait_for_selector('section.route[data-route="attachments"] .cell-btn')
    titles = await page.locator("section.route h2").all_inner_texts()
    assert titles == ["contacts", "tickets", "attachments"]
    assert await page.inner_text("#who-name") == "alice"
    token_kept = await page.evaluate("sessionStorage.getItem('cutover.token')")
    assert token_kept == proxy.token
    assert await page.evaluate("document.cookie") == ""
    pilot_chat = page.locator('[data-key="cell|contacts|chat|pilot"]')
    assert await pilot_chat.get_attribute("data-weight") == "100"

    # live figures arrive with the demo traffic
    await wait_for(lambda: rate(page, "contacts", "old"), timeout=15, what="live rates")

    # --- move a weight: email customers to new, with a reason ---------------------------------
    assert await platform_of(http, proxy, EMAIL_CUSTOMER, "email") == "old"
    cell = page.locator('[data-key="cell|contacts|email|everyone"]')
    await cell.click()
    await page.wait_for_selector("dialog[open] #weight-percent")
    assert await focus_in_dialog(page)
    await page.fill("#weight-percent", "100")
    await page.fill("#weight-reason", "email wave 1")
    await accessible(page, "the weight dialog")
    await page.screenshot(path=str(shots / "weight-dialog.png"))
    started = time.monotonic()
    await page.click("dialog button[type=submit]")
    await page.wait_for_selector('[data-key="cell|contacts|email|everyone"][data-weight="100"]')
    took = time.monotonic() - started
    assert took < 1.0, f"the change showed after {took:.2f}s, not within a second"
    await page.wait_for_selector("dialog:not([open])", state="attached")
    assert "100 % on the new platform" in await page.inner_text("#toast")
    assert await active_key(page) == "cell|contacts|email|everyone", "focus back on the cell"
    assert await platform_of(http, proxy, EMAIL_CUSTOMER, "email") == "new"
    written = YAML(typ="safe").load(proxy.config.read_text())
    assert written["routes"][0]["weights"]["email"] == {"everyone": 100}, "kept in routes.yaml"
    await wait_for(
        lambda: rate(page, "contacts", "new"), timeout=20, what="new traffic on the chart"
    )
    if for_docs():  # a minute of history makes charts worth showing in the README

        async def a_minute() -> bool:
            return await span(page) >= 60

        await wait_for(a_minute, timeout=120, what="a minute of chart history")
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(shots / "overview.png"))
    await accessible(page, "the overview")

    # --- keyboard: Escape cancels and returns focus; Tab stays in the dialog --------------------
    await cell.focus()
    await page.keyboard.press("Enter")
    await page.wait_for_selector("dialog[open]")
    for _ in range(7):
        await page.keyboard.press("Tab")
        assert await focus_in_dialog(page), "Tab left the open dialog"
    await page.keyboard.press("Shift+Tab")
    assert await focus_in_dialog(page)
    await page.keyboard.press("Escape")
    await page.wait_for_selector("dialog:not([open])", state="attached")
    assert await active_key(page) == "cell|contacts|email|everyone"
    outline = await cell.evaluate("element => getComputedStyle(element).outlineStyle")
    assert outline not in ("", "none"), "keyboard focus is visible"
    await page.keyboard.press("ArrowUp")
    assert await active_key(page) == "cell|contacts|phone|everyone"
    await page.keyboard.press("ArrowLeft")
    assert await active_key(page) == "cell|contacts|phone|business"
    await page.keyboard.press("ArrowUp")  # the edge: stays
    assert await active_key(page) == "cell|contacts|phone|business"

    # --- the brake, by keyboard: everything to old -------------------------------------------
    await page.focus("#brake")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("dialog[open] #rollback-reason")
    await page.keyboard.type("wait times up")
    await page.screenshot(path=str(shots / "brake-dialog.png"))
    await page.keyboard.press("Tab")  # Cancel
    await page.keyboard.press("Tab")  # Roll back everything
    assert await page.evaluate("document.activeElement.textContent") == "Roll back everything"
    await page.keyboard.press("Enter")
    await page.wait_for_selector(".banner.bad:has-text('Everything is rolled back')")
    lost = await page.evaluate("document.activeElement === document.body")
    assert not lost, "the keyboard focus survives the brake (now disabled)"
    assert await page.inner_text("#brake") == "Everything is on old"
    assert await platform_of(http, proxy, EMAIL_CUSTOMER, "email") == "old"
    assert await platform_of(http, proxy, "C-1001", "chat") == "old"
    assert await page.get_attribute('[data-key="cell|contacts|chat|pilot"]', "data-held") == "1"

    async def new_stopped() -> bool:
        return await rate(page, "contacts", "new") == 0 and await rate(page, "contacts", "old") > 0

    await wait_for(new_stopped, timeout=20, what="the page's figures to show no traffic on new")
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(shots / "rolled-back.png"))

    # --- the audit list says who and why -------------------------------------------------------
    await page.click(".tabs a[data-view=audit]")
    rows = page.locator(".audit-list tbody tr")
    await rows.first.wait_for()
    newest, older = await rows.nth(0).inner_text(), await rows.nth(1).inner_text()
    assert "alice (console)" in newest and "rollback" in newest and "wait times up" in newest
    assert "alice (console)" in older and "weight" in older and "email wave 1" in older
    assert "0 % → 100 %" in older
    await page.screenshot(path=str(shots / "audit.png"))
    await accessible(page, "the audit list with a rollback banner")

    # --- resume, keyboard only, from the banner ------------------------------------------------
    await page.focus(".banner button")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("dialog[open] #resume-reason")
    await page.keyboard.type("fixed")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await page.wait_for_selector(".banner", state="detached")
    assert await platform_of(http, proxy, EMAIL_CUSTOMER, "email") == "new"
    assert await page.inner_text("#brake") == "Roll back everything"

    # --- a phased plan, one step on ---------------------------------------------------------
    await page.click(".tabs a[data-view=overview]")
    plan = page.locator('section.route[data-route="attachments"] .plan')
    assert "Plan step 1 of 2" in await plan.inner_text()
    await page.click('[data-key="advance|attachments"]')
    await page.fill("#advance-reason", "pilot looks good")
    await page.click("dialog button[type=submit]")
    await page.wait_for_selector('[data-key="advance|attachments"]', state="detached")
    assert "Plan step 2 of 2" in await plan.inner_text()
    assert (
        await page.get_attribute('[data-key="cell|attachments|web|everyone"]', "data-weight") == "5"
    )

    # --- the fleet: this instance, converged ---------------------------------------------------
    await page.click(".tabs a[data-view=fleet]")
    await page.wait_for_selector(".fleet-list tbody tr")
    assert "yes" in (await page.inner_text(".fleet-list tbody tr")).lower()
    await accessible(page, "the fleet")

    # --- diffs: filter, open one exchange, redacted values stay redacted ----------------------
    await page.click(".tabs a[data-view=diffs]")
    await page.select_option("#diff-route", "contacts")
    await page.select_option("#diff-result", "mismatch")
    await page.click(".filters button[type=submit]")
    await page.wait_for_selector("#diff-summary:has-text('route')")
    await page.wait_for_selector(".diff-list tbody tr")
    routes = await page.locator(".diff-list tbody tr td:nth-child(2)").all_inner_texts()
    assert routes and set(routes) == {"contacts"}
    await page.screenshot(path=str(shots / "diffs.png"))
    await accessible(page, "the diff list")
    await page.click(".diff-list tbody tr:first-child a")
    await page.wait_for_selector(".side-by-side")
    assert (
        await page.locator(
            ".side-by-side tr.chg, .side-by-side tr.only-old, .side-by-side tr.only-new"
        ).count()
        >= 1
    )
    assert await page.locator(".side-by-side .redacted").count() >= 2  # e-mail and phone
    text = await page.inner_text("main")
    assert not re.search(r"[\w.]+@example\.\w+", text), "an e-mail address in clear"
    await page.screenshot(path=str(shots / "diff.png"))
    await accessible(page, "one exchange")

    # --- a phone-sized screen: nothing sideways, the brake in reach ----------------------------
    await page.set_viewport_size(PHONE)
    await page.click(".tabs a[data-view=overview]")
    await page.wait_for_selector('section.route[data-route="contacts"]')
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a 375px screen"
    box = await page.locator("#brake").bounding_box()
    assert box is not None and box["y"] + box["height"] <= PHONE["height"]
    assert box["width"] >= 300, "the brake spans the phone's width"
    await page.screenshot(path=str(shots / "phone.png"))
    await accessible(page, "the overview on a phone")
    await cell.click()
    await page.wait_for_selector("dialog[open]")
    dialog_box = await page.locator("dialog").bounding_box()
    assert dialog_box is not None and dialog_box["width"] <= PHONE["width"]
    await page.keyboard.press("Escape")
