from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from accounts.services import api_key_create, user_mark_email_verified
from marketplace.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Create an API key for a user and print it (shown once). The user's email address "
        "must be verified; --verify-email records the operator's word for it."
    )

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--scopes", default="read,train,infer")
        parser.add_argument("--name", default="created by manage.py")
        parser.add_argument(
            "--rate-limit",
            type=int,
            default=None,
            help="The key's own calls a minute, at most SERVING_RATE_LIMIT_PER_MINUTE.",
        )
        parser.add_argument(
            "--verify-email",
            action="store_true",
            help="Mark the user's address verified first: you vouch that it is theirs.",
        )

    def handle(self, *args, email, scopes, name, rate_limit, verify_email, **options):
        user = User.objects.filter(email=email.strip().lower()).first()
        if user is None:
            raise CommandError(f"No user with email {email}.")
        if verify_email:
            user_mark_email_verified(user=user)
        elif not user.email_verified:
            raise CommandError(
                f"{user.email} has not verified their address. They can open the link "
                "they were sent (or send a new one from their dashboard); or pass "
                "--verify-email if you vouch for it."
            )
        try:
            _, plaintext = api_key_create(
                user=user,
                name=name,
                scopes=[s.strip() for s in scopes.split(",") if s.strip()],
                rate_limit_per_minute=rate_limit,
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(plaintext)
