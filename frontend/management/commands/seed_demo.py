"""Seed the demo accounts (idempotent): an expert, a buyer and a moderator."""

from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import MODERATORS_GROUP, ExpertProfile, User
from accounts.services import moderators_group_sync

DEMO_PASSWORD = "niche-demo-2026"  # noqa: S105  public demo accounts, printed on start
DEMO_ACCOUNTS = {
    "expert@demo.niche": {"display_name": "Dr. Ada Expert", "is_expert": True},
    "buyer@demo.niche": {"display_name": "Bea Buyer", "is_expert": False},
    "moderator@demo.niche": {"display_name": "Mo Moderator", "is_staff": True},
}


class Command(BaseCommand):
    help = "Create the demo accounts (idempotent) and print their logins."

    @transaction.atomic
    def handle(self, *args, **options):
        moderators_group_sync()
        moderators = Group.objects.get(name=MODERATORS_GROUP)
        for email, fields in DEMO_ACCOUNTS.items():
            user = User.objects.filter(email=email).first()
            if user is None:
                user = User.objects.create_user(email=email, password=DEMO_PASSWORD, **fields)
            if user.is_expert:
                ExpertProfile.objects.get_or_create(
                    user=user,
                    defaults={
                        "headline": "Clinical NLP researcher",
                        "bio": "Builds small models from curated clinical notes.",
                        "domains": ["healthcare"],
                    },
                )
            if user.is_staff:
                user.groups.add(moderators)
        self.stdout.write(f"Demo accounts (password for each: {DEMO_PASSWORD}):")
        for email in DEMO_ACCOUNTS:
            self.stdout.write(f"  {email}")
