"""Settings fail loudly, production passes check --deploy, compose names real commands."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured

from marketplace.settings.env import env_bool, env_int, env_list

ROOT = Path(__file__).resolve().parents[2]


def test_env_helpers_parse_and_fail_loudly(monkeypatch):
    monkeypatch.setenv("NICHE_FLAG", "yes")
    monkeypatch.setenv("NICHE_NUMBER", "12")
    monkeypatch.setenv("NICHE_HOSTS", "a.example, b.example,")
    assert env_bool("NICHE_FLAG") is True
    assert env_int("NICHE_NUMBER", minimum=1) == 12
    assert env_list("NICHE_HOSTS") == ["a.example", "b.example"]

    monkeypatch.setenv("NICHE_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="NICHE_FLAG"):
        env_bool("NICHE_FLAG")
    monkeypatch.setenv("NICHE_NUMBER", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("NICHE_NUMBER", minimum=1)
    with pytest.raises(ImproperlyConfigured, match="NICHE_MISSING is required"):
        env_int("NICHE_MISSING")


def _manage(args: list[str], env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}  # test-only
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "marketplace.settings.production",
    "SECRET_KEY": "p7Zq-3v9!kLm2@xR8#tW4$yN6%bC1^dF5&gH0*jK-sA7+eQ9=uI2~oP4",
    "ALLOWED_HOSTS": "niche.example.com",
    "DATABASE_URL": "postgres://niche:secret@db.example.com:5432/niche",
    "REDIS_URL": "redis://cache.example.com:6379/0",
    "NICHE_SIGNING_KEY": "5Z4cZ4SjJ2O8ULbEpWp4KQf0iHMAbD1fMnc7bqR3l2A=",
    "STRIPE_SECRET_KEY": "sk_live_placeholder_for_settings_checks",
    "STRIPE_WEBHOOK_SECRET": "whsec_placeholder_for_settings_checks",
    "AWS_STORAGE_BUCKET_NAME": "niche-artifacts",
    "EMAIL_HOST": "smtp.niche.example.com",
}


def test_production_settings_pass_check_deploy_without_warnings():
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV} | PRODUCTION_ENV

    result = _manage(["check", "--deploy", "--fail-level", "WARNING"], env)

    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues (0 silenced)" in result.stdout


def test_production_refuses_to_start_without_its_required_variables():
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    env |= PRODUCTION_ENV
    del env["DATABASE_URL"]

    result = _manage(["check"], env)

    assert result.returncode != 0
    assert "DATABASE_URL is required" in result.stderr


def test_production_refuses_a_weak_secret_key():
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    env |= PRODUCTION_ENV | {"SECRET_KEY": "short"}

    result = _manage(["check"], env)

    assert result.returncode != 0
    assert "SECRET_KEY must be at least 50" in result.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("SEALED_SPLIT_SECRET", "SEALED_SPLIT_SECRET must be at least 32"),
        ("HEALTHZ_TOKEN", "HEALTHZ_TOKEN must be at least 32"),
    ],
)
def test_production_refuses_a_guessable_split_secret_or_health_token(name, message):
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    env |= PRODUCTION_ENV | {name: "guessable"}

    result = _manage(["check"], env)

    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("unset", "extra", "message"),
    [
        ("STRIPE_SECRET_KEY", {}, "STRIPE_SECRET_KEY is required in production"),
        ("STRIPE_WEBHOOK_SECRET", {}, "STRIPE_WEBHOOK_SECRET is required in production"),
        (None, {"STRIPE_API_BASE": "http://127.0.0.1:9"}, "STRIPE_API_BASE is for tests"),
        (None, {"PLATFORM_FEE_PERCENT": "120"}, "PLATFORM_FEE_PERCENT must be between"),
    ],
)
def test_production_refuses_to_start_in_billing_sandbox(unset, extra, message):
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    env |= PRODUCTION_ENV | extra
    if unset:
        del env[unset]

    result = _manage(["check"], env)

    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("unset", "extra", "message"),
    [
        # New accounts verify their address by email: the console backend would eat the links.
        ("EMAIL_HOST", {}, "EMAIL_HOST is required in production"),
        (None, {"EMAIL_USE_TLS": "1", "EMAIL_USE_SSL": "1"}, "EMAIL_USE_TLS and EMAIL_USE_SSL"),
        (None, {"SIGNUP_MAX_PER_HOUR": "0"}, "SIGNUP_MAX_PER_HOUR"),
        (None, {"API_KEYS_MAX_PER_USER": "many"}, "API_KEYS_MAX_PER_USER"),
    ],
)
def test_production_refuses_to_start_without_a_mail_server_or_with_bad_limits(
    unset, extra, message
):
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    env |= PRODUCTION_ENV | extra
    if unset:
        del env[unset]

    result = _manage(["check"], env)

    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("value", [None, "", "c2hvcnQ=", "not base64!"])
def test_production_refuses_a_missing_or_malformed_signing_key(value):
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    env |= PRODUCTION_ENV
    if value is None:
        del env["NICHE_SIGNING_KEY"]
    else:
        env["NICHE_SIGNING_KEY"] = value

    result = _manage(["check"], env)

    assert result.returncode != 0
    assert "NICHE_SIGNING_KEY" in result.stderr


def test_docker_compose_parses_and_names_commands_that_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]

    assert {"postgres", "redis", "web", "worker", "gpu-worker", "beat"} <= set(services)
    app_services = [s for s in services.values() if s.get("image") == "niche:latest"]
    assert len(app_services) >= 4  # web, worker, gpu-worker, beat share one definition
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    gpu_command = services["gpu-worker"]["command"]
    assert gpu_command[gpu_command.index("-Q") + 1] == "training"
    # Inference has a worker of its own on the GPU, threads pool: one batcher per process.
    inference = services["gpu-inference"]["command"]
    assert inference[inference.index("-Q") + 1] == "inference"
    assert inference[inference.index("-P") + 1] == "threads"
    assert services["gpu-inference"]["deploy"] == services["gpu-worker"]["deploy"]

    for name, service in services.items():
        command = service.get("command")
        if service.get("image") != "niche:latest" or not command:
            continue
        program = command[0]
        if command[:3] == ["python", "-m", "marketplace.server"]:
            continue  # the web tier: test_every_deployment_starts_the_web_tier_one_way
        if program == "python":
            assert command[1] == "manage.py"
            listed = _manage(["help", "--commands"], dict(os.environ)).stdout.split()
            assert command[2] in listed, f"{name}: manage.py {command[2]} does not exist"
        else:
            assert program == "celery", f"{name}: {program} is not how Niche starts a process"
            args = [sys.executable, "-m", "celery", *command[1:], "--help"]
            result = subprocess.run(
                args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ
            )
            assert result.returncode == 0, f"{name}: {' '.join(command)}\n{result.stderr}"


WEB_TIER = ["python", "-m", "marketplace.server"]


def test_every_deployment_starts_the_web_tier_one_way():
    """The image, compose and make run start the same command; nothing else names a
    server, so the config that was tested is the config that runs."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["web"]["command"] == WEB_TIER
    cmd = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD")
    ]
    assert cmd == ['CMD ["python", "-m", "marketplace.server"]']

    from marketplace import launcher, server

    assert server.COMMAND[1:] == ["-m", "gunicorn", "-c", "python:marketplace.gunicorn_conf"]
    assert '[sys.executable, "-m", "marketplace.server"]' in Path(launcher.__file__).read_text()

    server = r"(gunicorn|uvicorn|daphne|hypercorn)"
    starts_a_server = re.compile(
        rf"-m[\"']?,?\s*[\"']?{server}\b"  # python -m gunicorn, [..., "-m", "uvicorn"]
        rf"|[\"']({server[1:-1]}|runserver)[\"']"  # a program named in an argument list
        r"|manage\.py\s+runserver"
    )
    shell_start = re.compile(rf"^\s*(exec\s+|RUN\s+|CMD\s+)?{server}\s")
    allowed = {"marketplace/server.py", "tests/marketplace/test_settings_and_ops.py"}
    offenders = []
    sources = [
        ROOT / "Dockerfile",
        ROOT / "docker-compose.yml",
        ROOT / "Makefile",
        *ROOT.glob(".ci/*"),
        *ROOT.glob("bin/*"),
    ]
    for folder in ("marketplace", "bench", "tests", "serving", "frontend", "training_worker"):
        sources += ROOT.glob(f"{folder}/**/*.py")
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed or not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            shell = path.suffix != ".py" and shell_start.search(code)
            if starts_a_server.search(code) or shell:
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []

    # In a process of its own: the config sets environment variables as it loads.
    probe = (
        "import marketplace.gunicorn_conf as c, marketplace.server, marketplace.asgi;"
        "print(c.wsgi_app, c.worker_class)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "marketplace.asgi:application",
        "marketplace.server.UvicornWorker",
    ]


def test_the_docker_build_collects_static_files_under_production_settings(tmp_path):
    """The image's `collectstatic` step runs with build-only placeholders for every
    variable production requires; a new required variable must get one there too."""
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    run = next(line for line in dockerfile.splitlines() if "collectstatic" in line)
    command = run.removeprefix("RUN ").replace("python manage.py", f"{sys.executable} manage.py", 1)
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.production",  # the image's ENV
        "NICHE_VAR_DIR": str(tmp_path),
    }

    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "static files copied" in result.stdout
    assert (tmp_path / "static" / "staticfiles.json").exists()
