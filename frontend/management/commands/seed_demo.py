"""Seed the demo (idempotent): accounts, the tiny causal base, the expert's datasets,
and on the first start a fine-tune per dataset that is listed when it finishes.
"""

from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import MODERATORS_GROUP, ExpertProfile, User
from accounts.services import user_mark_email_verified
from evidence.benchmarks import benchmark_sets_seed_shipped
from frontend.services import (
    DEMO_CURATOR_EMAIL,
    DEMO_DATA,
    DEMO_EXPERT_EMAIL,
    DEMO_MODERATOR_EMAIL,
    DEMO_SPECIALISTS,
    demo_training_start,
)
from training_worker import services as studio_services
from training_worker.models import Dataset

DEMO_PASSWORD = "niche-demo-2026"  # noqa: S105  public demo accounts, printed on start
DEMO_ACCOUNTS = {
    DEMO_EXPERT_EMAIL: {"display_name": "Dr. Ada Expert", "is_expert": True},
    DEMO_CURATOR_EMAIL: {"display_name": "Cy Curator", "is_expert": True},
    "buyer@demo.niche": {"display_name": "Bea Buyer", "is_expert": False},
    DEMO_MODERATOR_EMAIL: {"display_name": "Mo Moderator", "is_staff": True},
}


DEMO_PROFILES = {
    DEMO_EXPERT_EMAIL: {
        "headline": "Clinical NLP researcher",
        "bio": "Builds small models from curated clinical notes.",
        "domains": ["healthcare"],
    },
    DEMO_CURATOR_EMAIL: {
        "headline": "Curates gardens of language specialists",
        "bio": "Composes other experts' models into products, and shares every call.",
        "domains": ["education"],
    },
}


class Command(BaseCommand):
    help = (
        "Create the demo accounts and datasets, queue the demo fine-tunes on the first "
        "run (idempotent) and print the logins."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--skip-models", action="store_true", help="Do not build the tiny causal LM."
        )
        parser.add_argument(
            "--skip-training",
            action="store_true",
            help="Do not queue the demo fine-tunes (nor watch them).",
        )

    def handle(self, *args, skip_models: bool = False, skip_training: bool = False, **options):
        if not skip_models:
            call_command("build_tiny_causal", stdout=self.stderr)
        self._seed()
        if not skip_training:
            self._start_demo_training()

    @transaction.atomic
    def _seed(self):
        moderators = Group.objects.get(name=MODERATORS_GROUP)
        for email, fields in DEMO_ACCOUNTS.items():
            user = User.objects.filter(email=email).first()
            if user is None:
                user = User.objects.create_user(email=email, password=DEMO_PASSWORD, **fields)
            # Demo accounts have no mailbox: their addresses count as verified.
            user_mark_email_verified(user=user)
            if user.is_expert:
                ExpertProfile.objects.get_or_create(user=user, defaults=DEMO_PROFILES[email])
            if user.is_staff:
                user.groups.add(moderators)
        expert = User.objects.get(email=DEMO_EXPERT_EMAIL)
        for spec in DEMO_SPECIALISTS:
            if not Dataset.objects.filter(owner=expert, name=spec.dataset_name).exists():
                content = (DEMO_DATA / spec.filename).read_bytes()
                studio_services.dataset_upload(
                    owner=expert,
                    file=SimpleUploadedFile(spec.filename, content),
                    name=spec.dataset_name,
                )
        # The leaderboards' sealed sets, from public corpora committed with the code.
        benchmark_sets_seed_shipped(created_by=User.objects.get(email=DEMO_MODERATOR_EMAIL))
        self.stdout.write(f"Demo accounts (password for each: {DEMO_PASSWORD}):")
        for email in DEMO_ACCOUNTS:
            self.stdout.write(f"  {email}")

    @transaction.atomic
    def _start_demo_training(self):
        expert = User.objects.get(email=DEMO_EXPERT_EMAIL)
        for job in demo_training_start(expert=expert):
            self.stderr.write(
                f"demo fine-tune {job.suffix} is {job.status}; "
                "it is listed in the catalogue when it succeeds"
            )
