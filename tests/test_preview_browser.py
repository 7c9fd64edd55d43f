"""The preview gallery in a real browser: Debian's Chromium driven by Playwright, on the loopback server.

Skipped locally when Chromium or Playwright is missing; required under CI=true (`.ci/run` installs
Chromium). Screenshots go to ``build/screenshots/`` (or ``PREVIEW_SCREENSHOTS``).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI

from worker.config.settings import PROJECT_ROOT
from worker.ops.preview_samples import sample_previews
from worker.ops.preview_server import PreviewSource, fresh_renderer, make_server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(os.environ.get("PREVIEW_SCREENSHOTS", PROJECT_ROOT / "build" / "screenshots"))
PHONE = {"width": 375, "height": 800}
DESKTOP = {"width": 1280, "height": 900}


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the browser tests are required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).is_file():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def gallery_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    templates = shutil.copytree(PROJECT_ROOT / "templates" / "email", tmp_path_factory.mktemp("preview") / "email")
    source = PreviewSource(
        renderer=fresh_renderer(templates),
        previews=lambda r: sample_previews(r),
        mail_from="Renewals <renewals@example.com>",
        description="built-in samples",
    )
    server = make_server(source, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert errors == []


def overflow_px(page: Any) -> int:
    """How far the page is wider than the window (0: nothing overflows sideways)."""
    return int(page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth"))


def shoot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def test_the_index_lists_every_email_and_fits_a_phone(page: Any, gallery_url: str) -> None:
    page.goto(gallery_url)
    shoot(page, "index-desktop")
    rows = page.locator("li.email")
    assert rows.count() > 100
    assert page.locator("#warnings").is_visible()

    page.set_viewport_size(PHONE)
    page.goto(gallery_url)
    shoot(page, "index-phone")
    assert overflow_px(page) == 0


def test_a_page_switches_locale_and_toggles_html_text_and_source(page: Any, gallery_url: str) -> None:
    page.goto(gallery_url)
    page.locator('li.email[data-slug="typical_first-notice_client"][data-locale="en"] a.subject').click()
    assert page.locator("h1.subject").inner_text() == "Your contract renewal for acme.com is coming up"
    frames = page.locator("iframe[sandbox='']")
    assert frames.count() == 2
    assert frames.nth(0).get_attribute("sandbox") == ""
    assert [round(frames.nth(i).bounding_box()["width"]) for i in range(2)] == [722, 377]  # 720 / 375 + borders
    assert page.frame_locator(".frame-phone iframe").locator("body").inner_text().count("acme.com") >= 1
    shoot(page, "page-html")

    page.locator("nav.locales a", has_text="de").click()
    assert page.url.endswith("/typical_first-notice_client/de.html")
    assert "acme.com" in page.locator("h1.subject").inner_text()
    assert page.locator("html").get_attribute("lang") == "en"  # the gallery's, not the email's
    assert page.frame_locator(".frame-desktop iframe").locator("html").get_attribute("lang") == "de"

    assert page.locator("pre.text").is_hidden()
    page.locator("label[for=view-text]").click()
    assert page.locator("pre.text").is_visible()
    assert page.locator(".panel-html").is_hidden()
    assert "acme.com" in page.locator("pre.text").inner_text()
    shoot(page, "page-text")

    page.locator("label[for=view-source]").click()
    source = page.locator("pre.source")
    assert source.is_visible()
    assert "Content-Language: de" in source.inner_text()
    assert "X-Renewal-Reminder: northwind/r-1001/first-notice" in source.inner_text()
    shoot(page, "page-source")

    page.locator("label[for=view-html]").click()
    assert page.locator(".panel-html").is_visible()


def test_no_page_overflows_at_375_px_in_any_view(page: Any, gallery_url: str) -> None:
    page.set_viewport_size(PHONE)
    for slug in ("typical_first-notice_client", "hostile-1_final-notice_partner", "hostile-4_first-notice_partner"):
        page.goto(f"{gallery_url}{slug}/de.html")
        for view in ("html", "text", "source"):
            label = page.locator(f"label[for=view-{view}]")
            if label.count():
                label.click()
            assert overflow_px(page) == 0, f"{slug} ({view}) overflows at 375 px"
    shoot(page, "page-phone")


def test_every_page_shows_its_subject(page: Any, gallery_url: str) -> None:
    page.goto(gallery_url)
    links = page.locator("li.email a.subject")
    expected = [(links.nth(i).get_attribute("href"), links.nth(i).inner_text()) for i in range(links.count())]
    assert len(expected) > 100
    for href, subject in expected:
        page.goto(gallery_url + href, wait_until="domcontentloaded")
        assert page.locator("h1.subject").inner_text() == subject, href
        assert page.title() == subject


def test_the_email_itself_fits_a_phone_width(page: Any, gallery_url: str) -> None:
    for slug in ("typical_first-notice_client", "typical_final-notice_partner"):
        page.goto(f"{gallery_url}{slug}/de.html")
        frame = page.locator(".frame-phone iframe")
        frame_width = frame.bounding_box()["width"]
        card = page.frame_locator(".frame-phone iframe").locator("td.card").first
        box = card.bounding_box()
        assert box["x"] + box["width"] <= frame.bounding_box()["x"] + frame_width, (
            f"{slug}: the email is wider than 375 px"
        )
