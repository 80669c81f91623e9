"""Build the tiny causal LM base model into MODEL_CACHE_DIR (idempotent)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from training_worker.models import BaseModel

TINY_CAUSAL_DIR = "tiny-causal"


class Command(BaseCommand):
    help = "Build the tiny causal LM from a config (no download) under the model cache."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Rebuild even if present.")

    def handle(self, *args, force: bool, **options):
        dest = settings.MODEL_CACHE_DIR / TINY_CAUSAL_DIR
        if (dest / "config.json").exists() and not force:
            self.stdout.write(f"tiny-causal already built at {dest}")
            return
        from training_worker.ml.base_models import build_tiny_causal_lm  # imports torch

        build_tiny_causal_lm(dest)
        count = _parameter_count(dest)
        BaseModel.objects.filter(slug="tiny-causal").update(parameter_count=count)
        self.stdout.write(f"built tiny-causal ({count:,} parameters) at {dest}")


def _parameter_count(model_dir) -> int:
    from math import prod

    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        return sum(prod(weights.get_slice(key).get_shape()) for key in weights.keys())  # noqa: SIM118
