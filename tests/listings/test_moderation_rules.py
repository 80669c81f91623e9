"""Rules the moderation services keep whatever screen calls them."""

import pytest

from listings import services
from listings.models import Listing, ModerationAction
from marketplace.errors import ApplicationError
from tests.conftest import make_user
from tests.listings.conftest import make_listing


def test_the_audit_log_refuses_bulk_edits_and_deletes(alice, carol, published):
    assert ModerationAction.objects.count() == 1

    with pytest.raises(PermissionError):
        ModerationAction.objects.all().delete()
    with pytest.raises(PermissionError):
        ModerationAction.objects.filter(actor=carol).update(reason="rewritten")
    row = ModerationAction.objects.get()
    with pytest.raises(PermissionError):
        row.delete()
    row.reason = "rewritten"
    with pytest.raises(PermissionError):
        row.save()
    assert ModerationAction.objects.get().reason == ""


def test_a_moderator_cannot_moderate_their_own_listing(carol):
    carol.is_expert = True
    carol.save()
    listing = make_listing(carol, title="Carol's own model")
    services.listing_submit(owner=carol, listing_id=listing.id)

    with pytest.raises(ApplicationError) as raised:
        services.listing_approve(moderator=carol, listing_id=listing.id)

    assert raised.value.code == "conflict_of_interest"
    listing.refresh_from_db()
    assert listing.status == "in_review"


def test_suspending_twice_is_409_and_writes_one_audit_row(carol, mallory):
    services.user_suspend(moderator=carol, user=mallory, reason="Spam")

    with pytest.raises(ApplicationError) as raised:
        services.user_suspend(moderator=carol, user=mallory, reason="Spam again")

    assert raised.value.status == 409
    assert ModerationAction.objects.filter(action="suspend_user").count() == 1
    services.user_reinstate(moderator=carol, user=mallory)
    with pytest.raises(ApplicationError):
        services.user_reinstate(moderator=carol, user=mallory)


def test_only_an_administrator_suspends_a_moderator(carol, db):
    from django.contrib.auth.models import Group

    other = make_user("dave@example.com", is_staff=True)
    other.groups.add(Group.objects.get(name="moderators"))
    admin = make_user("root@example.com", is_staff=True, is_superuser=True)

    with pytest.raises(ApplicationError) as raised:
        services.user_suspend(moderator=carol, user=other, reason="Rogue")
    assert raised.value.status == 403
    services.user_suspend(moderator=admin, user=other, reason="Rogue")
    other.refresh_from_db()
    assert other.is_active is False


def test_verifying_an_expert_twice_is_409(alice, carol):
    services.expert_verify(moderator=carol, profile=alice.expert_profile, note="Licence checked")

    with pytest.raises(ApplicationError) as raised:
        services.expert_verify(moderator=carol, profile=alice.expert_profile, note="Again")

    assert raised.value.status == 409
    alice.expert_profile.refresh_from_db()
    assert alice.expert_profile.verification_note == "Licence checked"


def test_resolving_an_unknown_report_is_404(carol):
    with pytest.raises(ApplicationError) as raised:
        services.report_resolve(moderator=carol, report_id=999999, actioned=True, note="x")

    assert raised.value.status == 404


def test_new_versions_only_go_on_published_listings(alice, carol, published):
    from tests.listings.conftest import make_version

    services.listing_suspend(moderator=carol, listing_id=published.id, reason="Checking")

    with pytest.raises(ApplicationError) as raised:
        services.listing_propose_version(
            owner=alice, listing_id=published.id, model_version_id=make_version(alice).id
        )

    assert raised.value.status == 409


def test_approving_a_version_that_was_proposed_again_before_the_check_is_409(
    alice, carol, published
):
    # A proposal saved before proposals were checked: the live version, offered again.
    Listing.objects.filter(pk=published.pk).update(proposed_version=published.live_version)

    with pytest.raises(ApplicationError) as raised:
        services.listing_version_approve(moderator=carol, listing_id=published.id)

    assert (raised.value.status, raised.value.code) == (409, "version_already_listed")
    assert published.versions.count() == 1
    assert not ModerationAction.objects.filter(action="approve_version").exists()
