"""Seed the demo (idempotent): accounts, the tiny causal base, the expert's datasets."""

from pathlib import Path

from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import MODERATORS_GROUP, ExpertProfile, User
from accounts.services import moderators_group_sync
from training_worker import services as studio_services
from training_worker.models import Dataset

DEMO_DATA = Path(__file__).resolve().parents[2] / "demo_data"
DEMO_DATASETS = {
    # file name: (name shown, what it is)
    "support_tickets.csv": "Support tickets (noisy, 4 classes)",
    "arithmetic.jsonl": "Arithmetic questions (generation)",
}

DEMO_PASSWORD = "niche-demo-2026"  # noqa: S105  public demo accounts, printed on start
DEMO_ACCOUNTS = {
    "expert@demo.niche": {"display_name": "Dr. Ada Expert", "is_expert": True},
    "buyer@demo.niche": {"display_name": "Bea Buyer", "is_expert": False},
    "moderator@demo.niche": {"display_name": "Mo Moderator", "is_staff": True},
}


class Command(BaseCommand):
    help = "Create the demo accounts and datasets (idempotent) and print the logins."

    def add_arguments(self, parser):
        parser.add_argument(
            "--skip-models", action="store_true", help="Do not build the tiny causal LM."
        )

    def handle(self, *args, skip_models: bool = False, **options):
        if not skip_models:
            call_command("build_tiny_causal", stdout=self.stderr)
        self._seed()

    @transaction.atomic
    def _seed(self):
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
        expert = User.objects.get(email="expert@demo.niche")
        for filename, name in DEMO_DATASETS.items():
            if not Dataset.objects.filter(owner=expert, name=name).exists():
                content = (DEMO_DATA / filename).read_bytes()
                studio_services.dataset_upload(
                    owner=expert, file=SimpleUploadedFile(filename, content), name=name
                )
        self.stdout.write(f"Demo accounts (password for each: {DEMO_PASSWORD}):")
        for email in DEMO_ACCOUNTS:
            self.stdout.write(f"  {email}")
