"""The moderation console: carol decides through the real admin, every decision audited.

Each test drives /admin/ with a logged-in Client and checks the page or redirect it gets
back *and* the rows the services wrote (or did not write).
"""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from accounts.models import ExpertProfile, User
from listings import services
from listings.models import (
    Listing,
    ListingStatus,
    ModerationAction,
    ModerationActionType,
    Report,
    ReportReason,
    ReportStatus,
)
from tests.conftest import make_user
from training_worker.models import BaseModel, Dataset, FineTuningJob, ModelVersion

LISTINGS_URL = "/admin/listings/listing/"
REPORTS_URL = "/admin/listings/report/"
AUDIT_URL = "/admin/listings/moderationaction/"
USERS_URL = "/admin/accounts/user/"
EXPERTS_URL = "/admin/accounts/expertprofile/"

EVALUATION = {
    "task": "text-classification",
    "sealed_rows": 30,
    "metrics": {"accuracy": 0.9, "macro_f1": 0.88},
    "intervals": {"accuracy": [0.8, 0.97], "macro_f1": [0.75, 0.95]},
    "baselines": {
        "majority_class": {"accuracy": 0.5, "macro_f1": 0.33, "label": "a"},
        "generalist_zero_shot": {"accuracy": 0.6, "macro_f1": 0.5, "method": "embedding"},
    },
    "lift": {
        "over_majority_class": {"metric": "accuracy", "delta": 0.4, "ci_low": 0.3, "ci_high": 0.5},
        "over_generalist_zero_shot": {
            "metric": "accuracy", "delta": 0.3, "ci_low": 0.2, "ci_high": 0.41,
        },
    },
}  # fmt: skip
DATASET_REPORT = {
    "format": "csv",
    "task": "text-classification",
    "rows_total": 152,
    "rows_usable": 150,
    "errors": [],
    "warnings": [
        {"code": "duplicate_rows", "message": "Dropped repeated rows.", "rows": [7, 9], "count": 2}
    ],
    "sealed_split": {"sealed_rows": 30, "train_rows": 120},
}


# --- rows ---------------------------------------------------------------------------


def a_version(owner, *, evaluation=EVALUATION, report=DATASET_REPORT, card="") -> ModelVersion:
    dataset = Dataset.objects.create(
        owner=owner, name="d", filename="d.csv", size_bytes=1, sha256="0" * 64, status="ready",
        task="text-classification", report=report,
    )  # fmt: skip
    job = FineTuningJob.objects.create(
        owner=owner, base_model=BaseModel.objects.get(slug="minilm-l6"), dataset=dataset,
        task="text-classification", seed=1, status="succeeded",
    )  # fmt: skip
    return ModelVersion.objects.create(
        owner=owner, job=job, base_model=job.base_model, name=f"minilm-l6:ft:{job.id.hex[:6]}",
        task="text-classification", labels=["a", "b"], adapter_path="x", adapter_sha256="a" * 64,
        adapter_size=300_000, config_path="y", config_sha256="b" * 64, config_size=500,
        dataset_sha256="0" * 64, run_record={}, evaluation=evaluation,
        card=card or "---\nlicense: x\n---\n# Radiology triage",
    )  # fmt: skip


def a_listing_in_review(owner, *, title="Radiology triage", **version) -> Listing:
    listing = services.listing_create(
        owner=owner,
        model_version_id=a_version(owner, **version).id,
        title=title,
        summary="Sorts chest X-ray reports by urgency.",
        domain="healthcare",
    )
    return services.listing_submit(owner=owner, listing_id=listing.id)


def a_published_listing(owner, moderator, *, title="Radiology triage") -> Listing:
    listing = a_listing_in_review(owner, title=title)
    return services.listing_approve(moderator=moderator, listing_id=listing.id)


def console(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def run_action(client, url, action, rows, reason="", follow=True):
    """What the changelist's "Go" button posts; by default follows the redirect back."""
    selected = [str(row.pk) for row in rows]
    return client.post(
        url,
        {"action": action, "_selected_action": selected, "reason": reason, "index": 0},
        follow=follow,
    )


def messages_of(response) -> list[tuple[str, str]]:
    """The messages the changelist shows after an action's redirect."""
    assert response.redirect_chain and response.redirect_chain[0][1] == 302
    return [(m.level_tag, m.message) for m in response.context["messages"]]


def audit_rows(**filters):
    return ModerationAction.objects.filter(**filters)


@pytest.fixture
def root(db) -> User:
    return User.objects.create_superuser(email="root@example.com", password="correct horse")


@pytest.fixture
def dave(db) -> User:
    """Staff who may look at listings (and even holds change_listing) but is no moderator."""
    user = make_user("dave@example.com", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="listings", codename__in=["view_listing", "change_listing"]
        )
    )
    return user


# --- listings -----------------------------------------------------------------------


def test_carol_approves_a_listing_in_review_and_it_goes_live(alice, carol):
    listing = a_listing_in_review(alice)

    response = run_action(console(carol), LISTINGS_URL, "approve", [listing])

    assert messages_of(response) == [("success", "“Radiology triage”: approved and published.")]
    listing.refresh_from_db()
    assert listing.status == ListingStatus.PUBLISHED
    assert listing.live_version is not None and listing.proposed_version is None
    assert listing.score == 0.9 and listing.lift_over_generalist == 0.3
    action = audit_rows(listing=listing).get()
    assert (action.actor, action.action) == (carol, ModerationActionType.APPROVE)


def test_rejecting_without_a_reason_changes_nothing(alice, carol):
    listing = a_listing_in_review(alice)

    response = run_action(console(carol), LISTINGS_URL, "reject", [listing], reason="  ")

    assert messages_of(response) == [
        ("error", "“Radiology triage”: Give a reason; the expert will read it.")
    ]
    listing.refresh_from_db()
    assert listing.status == ListingStatus.IN_REVIEW
    assert not audit_rows().exists()


def test_rejecting_with_a_reason_stores_it_for_the_expert(alice, carol):
    listing = a_listing_in_review(alice)
    reason = "The sealed split is too small for a medical claim."

    response = run_action(console(carol), LISTINGS_URL, "reject", [listing], reason=reason)

    assert messages_of(response) == [("success", "“Radiology triage”: rejected.")]
    listing.refresh_from_db()
    assert listing.status == ListingStatus.REJECTED
    assert listing.status_reason == reason
    action = audit_rows(listing=listing).get()
    assert (action.action, action.reason) == (ModerationActionType.REJECT, reason)


def test_a_bulk_action_reports_each_refused_row_and_applies_the_rest(alice, carol):
    waiting = a_listing_in_review(alice, title="Waiting")
    live = a_published_listing(alice, carol, title="Already live")

    response = run_action(console(carol), LISTINGS_URL, "approve", [waiting, live])

    assert sorted(messages_of(response)) == [
        ("error", "“Already live”: Cannot approve a listing that is published."),
        ("success", "“Waiting”: approved and published."),
    ]
    waiting.refresh_from_db()
    assert waiting.status == ListingStatus.PUBLISHED
    assert audit_rows(listing=live).count() == 1  # only the approval from the setup


def test_suspension_hides_a_listing_until_it_is_reinstated(alice, carol, api):
    listing = a_published_listing(alice, carol)
    client = console(carol)
    catalogue = api()

    refused = run_action(client, LISTINGS_URL, "suspend", [listing])
    suspended = run_action(client, LISTINGS_URL, "suspend", [listing], reason="Leaks PHI.")
    listing.refresh_from_db()
    hidden = catalogue.get("/api/v1/listings").json()["data"]

    assert messages_of(refused)[0][0] == "error"
    assert messages_of(suspended) == [("success", "“Radiology triage”: suspended.")]
    assert (listing.status, listing.status_reason) == (ListingStatus.SUSPENDED, "Leaks PHI.")
    assert hidden == []

    reinstated = run_action(client, LISTINGS_URL, "reinstate", [listing], reason="Fixed.")
    listing.refresh_from_db()

    assert messages_of(reinstated) == [("success", "“Radiology triage”: reinstated.")]
    assert listing.status == ListingStatus.PUBLISHED
    assert [x["slug"] for x in catalogue.get("/api/v1/listings").json()["data"]] == [listing.slug]
    assert list(audit_rows(listing=listing).values_list("action", "reason")) == [
        (ModerationActionType.REINSTATE, "Fixed."),
        (ModerationActionType.SUSPEND, "Leaks PHI."),
        (ModerationActionType.APPROVE, ""),
    ]


def test_a_new_version_is_approved_or_rejected_while_the_live_one_serves(alice, carol):
    first = a_published_listing(alice, carol, title="First")
    second = a_published_listing(alice, carol, title="Second")
    live_of_second = second.live_version
    for listing in (first, second):
        services.listing_propose_version(
            owner=alice, listing_id=listing.id, model_version_id=a_version(alice).id
        )
    client = console(carol)

    approved = run_action(client, LISTINGS_URL, "approve_new_version", [first])
    unexplained = run_action(client, LISTINGS_URL, "reject_new_version", [second])
    rejected = run_action(
        client, LISTINGS_URL, "reject_new_version", [second], reason="Lift fell to zero."
    )

    assert messages_of(approved) == [("success", "“First”: new version approved and live.")]
    assert messages_of(unexplained)[0][0] == "error"
    assert messages_of(rejected) == [("success", "“Second”: new version rejected.")]
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.proposed_version is None
    assert [v.number for v in first.versions.all()] == [1, 2]
    assert first.live_version == first.versions.get(number=2).model_version
    assert second.proposed_version is None and second.live_version == live_of_second
    assert audit_rows(action=ModerationActionType.APPROVE_VERSION, listing=first).count() == 1
    rejection = audit_rows(action=ModerationActionType.REJECT_VERSION).get()
    assert (rejection.listing, rejection.reason) == (second, "Lift fell to zero.")
    assert rejection.target_type == "modelversion"


def test_the_review_queue_filter_lists_new_listings_and_versions_oldest_first(alice, carol):
    now = timezone.now()
    newer = a_listing_in_review(alice, title="Newer")
    older = a_listing_in_review(alice, title="Older")
    with_new_version = a_published_listing(alice, carol, title="New version")
    services.listing_propose_version(
        owner=alice, listing_id=with_new_version.id, model_version_id=a_version(alice).id
    )
    a_published_listing(alice, carol, title="Settled")
    services.listing_create(
        owner=alice, model_version_id=a_version(alice).id, title="Draft", summary="s",
        domain="healthcare",
    )  # fmt: skip
    for listing, age in ((older, 3), (with_new_version, 2), (newer, 1)):
        Listing.objects.filter(pk=listing.pk).update(submitted_at=now - timedelta(days=age))

    response = console(carol).get(LISTINGS_URL, {"queue": "needs_review"})

    assert response.status_code == 200
    queue = [listing.title for listing in response.context["cl"].result_list]
    assert queue == ["Older", "New version", "Newer"]
    assert "Needs review (oldest first)" in response.content.decode()


def test_the_listing_page_is_read_only_and_shows_what_a_moderator_checks(alice, carol):
    earlier = a_listing_in_review(alice, title="Earlier attempt")
    services.listing_reject(moderator=carol, listing_id=earlier.id, reason="Too few rows.")
    hostile = dict(DATASET_REPORT, warnings=[{"code": "odd_label", "count": 1,
                                              "message": "<script>alert(1)</script>"}])  # fmt: skip
    listing = a_listing_in_review(
        alice, report=hostile, card="# Card\n<img src=x onerror=alert(2)>"
    )
    client = console(carol)
    url = f"{LISTINGS_URL}{listing.pk}/change/"

    page = client.get(url)
    posted = client.post(url, {"title": "Edited by a moderator"})

    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html and 'name="title"' not in html
    # the evaluation: specialist with interval, each baseline, the lift with its interval
    assert "[0.8000, 0.9700]" in html
    assert "baseline: Generalist: zero-shot (strongest)" in html and "0.6000" in html
    assert "+0.3000" in html and "[0.2000, 0.4100]" in html
    # the dataset report, the card and the expert's record, escaped
    assert "152 rows, 150 usable, 30 sealed for evaluation" in html
    assert "odd_label" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html and "<img src=x" not in html
    assert "1 rejection(s), 0 listing suspension(s), 0 account suspension(s)" in html
    assert "Earlier attempt" in html and "Too few rows." in html
    assert posted.status_code == 403
    listing.refresh_from_db()
    assert listing.title == "Radiology triage"


def test_listings_cannot_be_added_or_deleted_in_the_console(alice, carol, root):
    listing = a_listing_in_review(alice)
    for user in (carol, root):
        client = console(user)
        assert client.get(f"{LISTINGS_URL}add/").status_code == 403
        deleted = client.post(f"{LISTINGS_URL}{listing.pk}/delete/", {"post": "yes"})
        assert deleted.status_code == 403
        assert "delete_selected" not in client.get(LISTINGS_URL).content.decode()
    assert Listing.objects.filter(pk=listing.pk).exists()


# --- reports ------------------------------------------------------------------------


def test_carol_triages_reports_with_a_note(alice, bob, carol):
    listing = a_published_listing(alice, carol)
    harmful = services.report_create(
        reporter=bob, listing=listing, reason=ReportReason.HARMFUL_OUTPUT, text="Bad advice."
    )
    spam = services.report_create(reporter=bob, listing=listing, reason=ReportReason.SPAM)
    client = console(carol)

    page = client.get(REPORTS_URL)
    unexplained = run_action(client, REPORTS_URL, "dismiss", [spam])
    actioned = run_action(client, REPORTS_URL, "mark_actioned", [harmful], reason="Suspended.")
    dismissed = run_action(client, REPORTS_URL, "dismiss", [spam, harmful], reason="Not spam.")

    assert page.status_code == 200
    assert f"{LISTINGS_URL}{listing.pk}/change/" in page.content.decode()
    assert messages_of(unexplained)[0][0] == "error"
    assert messages_of(actioned)[0][0] == "success"
    assert sorted(messages_of(dismissed)) == [
        ("error", f"“{harmful}”: The report is already actioned."),
        ("success", f"“{spam}”: dismissed."),
    ]
    harmful.refresh_from_db()
    spam.refresh_from_db()
    assert (harmful.status, harmful.resolved_by, harmful.resolution_note) == (
        ReportStatus.ACTIONED, carol, "Suspended.",
    )  # fmt: skip
    assert (spam.status, spam.resolution_note) == (ReportStatus.DISMISSED, "Not spam.")
    assert list(
        audit_rows(target_type="report").order_by("id").values_list("action", "target_id")
    ) == [
        (ModerationActionType.REPORT_ACTIONED, str(harmful.pk)),
        (ModerationActionType.REPORT_DISMISSED, str(spam.pk)),
    ]


# --- accounts -----------------------------------------------------------------------


def test_suspending_a_user_stops_their_api_keys_and_hides_their_listings(alice, carol, api):
    listing = a_published_listing(alice, carol)
    alices_script = api(alice)
    assert alices_script.get("/api/v1/api_keys").status_code == 200
    client = console(carol)

    unexplained = run_action(client, USERS_URL, "suspend_users", [alice])
    alice.refresh_from_db()
    assert messages_of(unexplained)[0][0] == "error" and alice.is_active

    suspended = run_action(client, USERS_URL, "suspend_users", [alice], reason="Fraud.")

    assert messages_of(suspended) == [("success", "“alice@example.com”: suspended.")]
    alice.refresh_from_db()
    assert not alice.is_active
    assert alices_script.get("/api/v1/api_keys").status_code == 401
    assert api().get("/api/v1/listings").json()["data"] == []
    action = audit_rows(action=ModerationActionType.SUSPEND_USER).get()
    assert (action.target_id, action.reason) == (str(alice.pk), "Fraud.")

    run_action(client, USERS_URL, "reinstate_users", [alice])

    alice.refresh_from_db()
    assert alice.is_active
    assert alices_script.get("/api/v1/api_keys").status_code == 200
    assert [x["slug"] for x in api().get("/api/v1/listings").json()["data"]] == [listing.slug]


def test_a_moderator_cannot_suspend_themselves(carol):
    response = run_action(console(carol), USERS_URL, "suspend_users", [carol], reason="Oops.")

    assert messages_of(response) == [
        ("error", "“carol@example.com”: Moderators cannot suspend themselves.")
    ]
    carol.refresh_from_db()
    assert carol.is_active


def test_moderators_cannot_edit_accounts_by_hand(carol, alice):
    client = console(carol)

    page = client.get(f"{USERS_URL}{carol.pk}/change/")
    promoted = client.post(
        f"{USERS_URL}{carol.pk}/change/",
        {"email": carol.email, "is_active": "on", "is_staff": "on", "is_superuser": "on"},
    )
    password = client.get(f"{USERS_URL}{alice.pk}/password/")

    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert promoted.status_code == 403
    assert password.status_code == 403
    carol.refresh_from_db()
    assert not carol.is_superuser


def test_verifying_an_expert_keeps_the_note_and_an_audit_row(alice, carol):
    profile = ExpertProfile.objects.get(user=alice)
    client = console(carol)

    page = client.get(EXPERTS_URL).content.decode()
    unexplained = run_action(client, EXPERTS_URL, "verify_experts", [profile])
    profile.refresh_from_db()
    assert messages_of(unexplained)[0][0] == "error" and not profile.verified

    note = "Checked the GMC register: licence 7012345."
    verified = run_action(client, EXPERTS_URL, "verify_experts", [profile], reason=note)

    assert 'value="verify_experts"' in page and "mark_verified" not in page
    assert messages_of(verified) == [("success", f"“{profile}”: verified.")]
    profile.refresh_from_db()
    assert (profile.verified, profile.verified_by, profile.verification_note) == (
        True, carol, note,
    )  # fmt: skip
    action = audit_rows(action=ModerationActionType.VERIFY_EXPERT).get()
    assert (action.target_type, action.target_id, action.reason) == (
        "expertprofile", str(profile.pk), note,
    )  # fmt: skip


# --- the audit log and who may use the console ---------------------------------------


@pytest.mark.parametrize("persona", ["carol", "root"])
def test_the_audit_log_cannot_be_changed_or_deleted(persona, alice, carol, request):
    listing = a_listing_in_review(alice)
    services.listing_reject(moderator=carol, listing_id=listing.id, reason="Too few rows.")
    action = audit_rows().get()
    client = console(request.getfixturevalue(persona))
    change_url = f"{AUDIT_URL}{action.pk}/change/"

    changelist = client.get(AUDIT_URL)
    page = client.get(change_url)
    edited = client.post(change_url, {"reason": "Nothing happened.", "action": "approve"})
    deleted = client.post(f"{AUDIT_URL}{action.pk}/delete/", {"post": "yes"})
    bulk_deleted = run_action(client, AUDIT_URL, "delete_selected", [action], follow=False)
    added = client.get(f"{AUDIT_URL}add/")

    assert changelist.status_code == 200
    assert "Too few rows." in changelist.content.decode()
    assert "delete_selected" not in changelist.content.decode()
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert (edited.status_code, deleted.status_code, added.status_code) == (403, 403, 403)
    assert bulk_deleted.status_code == 200  # the log offers no actions: nothing ran
    assert list(audit_rows().values_list("action", "reason")) == [
        (ModerationActionType.REJECT, "Too few rows.")
    ]


@pytest.mark.parametrize("persona", ["mallory", "bob"])
def test_people_without_staff_status_are_sent_to_the_admin_login(persona, alice, request):
    listing = a_listing_in_review(alice)
    client = console(request.getfixturevalue(persona))

    page = client.get(LISTINGS_URL)
    attempt = run_action(client, LISTINGS_URL, "approve", [listing], follow=False)

    assert page.status_code == 302 and page["Location"].startswith("/admin/login/")
    assert attempt.status_code == 302 and attempt["Location"].startswith("/admin/login/")
    listing.refresh_from_db()
    assert listing.status == ListingStatus.IN_REVIEW
    assert not audit_rows().exists()


def test_staff_outside_the_moderators_group_cannot_moderate(alice, dave):
    listing = a_listing_in_review(alice)
    client = console(dave)

    page = client.get(LISTINGS_URL)
    attempt = run_action(client, LISTINGS_URL, "approve", [listing])
    reports = client.get(REPORTS_URL)

    assert page.status_code == 200
    assert 'value="approve"' not in page.content.decode()
    assert attempt.status_code == 200 and not attempt.redirect_chain  # no action ran
    assert reports.status_code == 403
    listing.refresh_from_db()
    assert listing.status == ListingStatus.IN_REVIEW
    assert not audit_rows().exists()
    assert not Report.objects.exists()


def test_moderators_cannot_edit_evaluations_or_artifacts(alice, carol):
    from tests.listings.conftest import make_version

    version = make_version(alice)
    client = Client()
    client.force_login(carol)
    url = f"/admin/training_worker/modelversion/{version.id}/change/"

    page = client.get(url)
    posted = client.post(url, {"evaluation": "{}", "adapter_sha256": "0" * 64, "card": "x"})
    deleted = client.post(
        f"/admin/training_worker/modelversion/{version.id}/delete/", {"post": "yes"}
    )

    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert posted.status_code == 403 and deleted.status_code == 403
    version.refresh_from_db()
    assert version.evaluation["metrics"]["accuracy"] == 0.9
    assert version.adapter_sha256 != "0" * 64
