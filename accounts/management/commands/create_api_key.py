from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from accounts.services import api_key_create
from marketplace.errors import ApplicationError


class Command(BaseCommand):
    help = "Create an API key for a user and print it (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--scopes", default="read,train,infer")
        parser.add_argument("--name", default="created by manage.py")

    def handle(self, *args, email, scopes, name, **options):
        user = User.objects.filter(email=email.strip().lower()).first()
        if user is None:
            raise CommandError(f"No user with email {email}.")
        try:
            _, plaintext = api_key_create(
                user=user, name=name, scopes=[s.strip() for s in scopes.split(",") if s.strip()]
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(plaintext)
