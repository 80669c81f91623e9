"""The Docker build context leaves secrets, local state and the checkout's history out.

`docker_ignores` follows Docker's .dockerignore rules for the patterns this file
uses (`*`, `**`, `?`, `[...]`, `!` exceptions, last match wins, a pattern that
matches a parent folder matches everything below it). It is not Docker itself: the
test proves what the file says, not what a given Docker version builds.
"""

import re
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def _to_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def _patterns(text: str) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        line = line.removeprefix("!").strip().strip("/").removeprefix("./")
        rules.append((exception, _to_regex(line)))
    return rules


def docker_ignores(path: str, text: str) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for exception, regex in _patterns(text):
        if exception != ignored:
            continue  # only an exception can undo a match, only a rule can make one
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not exception
    return ignored


@pytest.fixture(scope="module")
def dockerignore() -> str:
    path = ROOT / ".dockerignore"
    assert path.exists(), "the build context needs a .dockerignore next to the Dockerfile"
    return path.read_text()


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        "frontend/.env",
        "var/niche.sqlite3",
        "var/media/datasets/alice/notes.csv",
        "var/work/sealed/split.jsonl",
        "marketplace/var/leftover.sqlite3",
        ".git/config",
        ".venv/bin/python",
        "accounts/__pycache__/models.cpython-311.pyc",
        "listings/views.pyc",
        "niche.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeflags",
        "frontend/node_modules/chart.js/index.js",
        "tests/conftest.py",
        "bench/results/training.json",
        "docs/operations.md",
    ],
)
def test_secrets_state_and_history_stay_out_of_the_image(dockerignore, path):
    assert docker_ignores(path, dockerignore)


def test_the_image_still_gets_every_package_it_runs(dockerignore):
    local_apps = [app for app in settings.INSTALLED_APPS if (ROOT / app).is_dir()]
    needed = [f"{app}/__init__.py" for app in local_apps] + [
        "pyproject.toml",
        "README.md",
        "manage.py",
        "marketplace/settings/production.py",
        "frontend/templates/frontend/base.html",
        "frontend/static/frontend/niche.css",
        "accounts/migrations/0001_initial.py",
    ]

    assert "training_worker" in local_apps and "marketplace" in local_apps
    assert all((ROOT / p).exists() for p in needed)
    assert [p for p in needed if docker_ignores(p, dockerignore)] == []


def test_the_matcher_follows_dockers_rules():
    rules = "*\n!keep/\n**/secret\nkeep/drop.txt\n!keep/drop.txt\n"

    assert docker_ignores("anything.txt", rules)
    assert not docker_ignores("keep/a/b.py", rules)
    assert docker_ignores("keep/a/secret/b.py", rules)
    assert not docker_ignores("keep/drop.txt", rules)
