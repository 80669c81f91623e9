"""A newcomer signs up in Chromium, cannot mint a key until they open the emailed link,
then verifies and mints one."""

import re

import pytest
from django.core import mail

from accounts.models import ApiKey, User

pytestmark = [pytest.mark.integration]


def test_zoe_signs_up_verifies_her_address_from_the_email_and_creates_a_key(page, live_server):
    page.goto(f"{live_server.url}/signup/")
    page.fill("input[name=email]", "zoe@example.com")
    page.fill("input[name=password]", "plum orbit lantern 7")
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/")

    # Unverified: the dashboard says so and offers no key form
    assert "not verified yet" in page.inner_text("[data-testid=email-verification]")
    assert page.locator("[data-testid=keys-need-verification]").count() == 1
    assert page.locator("form[action='/dashboard/api-keys/']").count() == 0

    # The emailed link opens a page whose button verifies (the live server shares mail.outbox)
    link = re.search(r"http://\S+/verify-email/\S+/", mail.outbox[-1].body).group(0)
    page.goto(link)
    page.click("[data-testid=verify-email-confirm]")
    page.wait_for_url("**/dashboard/")
    assert "verified" in page.inner_text("[data-testid=email-verified]")
    assert User.objects.get(email="zoe@example.com").email_verified

    page.fill("input[name=name]", "laptop")
    page.click("form[action='/dashboard/api-keys/'] button[type=submit]")
    page.wait_for_selector("[data-testid=new-api-key]")
    assert ApiKey.objects.filter(user__email="zoe@example.com", name="laptop").exists()
