"""Issue 15: the API's /docs renders with no network but this machine (Swagger UI assets must be served locally).

Headless Chromium loads ``/docs`` with every request to a host other than
127.0.0.1 aborted, then looks for Swagger UI's rendered operations. This fails
while /docs loads its assets from a CDN.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import Services
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")


def test_api_docs_render_offline(services: Services) -> None:
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def only_local(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if urlparse(url).hostname == "127.0.0.1" or url.startswith("data:"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            blocked.append(url)
            route.abort()  # type: ignore[attr-defined]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_local)
            assert page.goto(services.url("api") + "/docs").status == 200
            try:
                page.wait_for_selector(".opblock", timeout=30_000)
            except Exception:
                pytest.fail(f"/docs rendered no operations offline; blocked requests: {blocked}")
            operations = page.locator(".opblock").count()
            assert operations >= 10, operations
            assert page.locator(".opblock-summary-path", has_text="/1/matcher/faces").count() >= 1
        finally:
            browser.close()
