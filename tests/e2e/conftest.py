"""Real Chromium (Debian's, never a downloaded build) driven by Playwright."""

import os
import shutil

import pytest
from django.conf import settings

from tests.integration.conftest import (  # noqa: F401  shared real-service fixtures
    celery_worker_process,
    redis_url,
    send_tasks_to_the_broker,
    shipped_base_models,
    worker_env,
)

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    """Module-scoped: while Playwright runs, its event loop sits in this thread, so it
    stops before other modules' tests use the ORM here."""
    if not shutil.which(CHROMIUM):
        if settings.IS_CI:
            pytest.fail("CI=true and Chromium is not installed at /usr/bin/chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread; Django then
    # refuses ORM calls from it unless told that these calls are plain sync code.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    # Whatever the page did, the Content-Security-Policy must not have blocked any of it.
    blocked = []
    page.on(
        "console",
        lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield page
    context.close()
    assert blocked == [], f"the CSP blocked: {blocked}"
