"""The boundaries DESIGN.md draws, checked on the source."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["accounts", "training_worker", "listings", "billing", "serving", "evidence", "frontend"]


def imported_top_level_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_contexts_import_only_those_to_their_left():
    offences = []
    for position, context in enumerate(ORDER):
        forbidden = set(ORDER[position + 1 :])
        for path in (ROOT / context).rglob("*.py"):
            bad = imported_top_level_packages(path) & forbidden
            if bad:
                offences.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offences == []


def test_marketplace_wiring_imports_no_context_at_module_level():
    offences = []
    for path in (ROOT / "marketplace").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; lazy imports inside functions are fine
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ORDER:
                offences.append(f"{path.relative_to(ROOT)}: {node.module}")
    assert offences == []


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def test_only_tasks_modules_know_celery_and_nothing_imports_tasks_back():
    # Services send tasks by name (marketplace.celery.send_after_commit), so the old
    # circle runner -> services -> tasks -> runner cannot come back.
    offences = []
    for context in ORDER:
        for path in (ROOT / context).rglob("*.py"):
            if "migrations" in path.parts or path.name == "tasks.py":
                continue
            for name in imported_modules(path):
                knows_celery = name.split(".")[0] == "celery"
                imports_tasks = name.endswith(".tasks") and path.name != "apps.py"
                if knows_celery or imports_tasks:
                    offences.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offences == []


def test_ml_code_never_imports_django():
    offences = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "training_worker" / "ml").rglob("*.py")
        if "django" in imported_top_level_packages(path)
    ]
    assert offences == []


def test_product_code_never_unpickles_or_runs_remote_code():
    offences = []
    for context in ["marketplace", *ORDER]:
        for path in (ROOT / context).rglob("*.py"):
            text = path.read_text()
            for needle in ("torch.load(", "pickle.load", "trust_remote_code=True"):
                if needle in text:
                    offences.append(f"{path.relative_to(ROOT)}: {needle}")
    assert offences == []


def test_web_process_serves_pages_and_api_without_importing_torch():
    script = """
import sys, django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.test")
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()
from django.test import Client
import marketplace.wsgi  # the web entry point
client = Client()
for path in ["/", "/login/", "/api/v1/fine_tuning/jobs", "/api/v1/datasets", "/api/schema/",
             "/v1/models"]:
    client.get(path)
client.post("/api/v1/models/any-listing/predict", {"inputs": ["x"]})
client.post("/v1/chat/completions", {"model": "any-listing"})
print("torch" in sys.modules, "transformers" in sys.modules, "peft" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False False False"
