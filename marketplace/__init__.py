"""Django project wiring for Niche; importing it loads the Celery app."""

from marketplace.celery import app as celery_app

__all__ = ("celery_app",)
