"""load.py as a buyer runs it: a virtual environment of PyPI packages only (no Niche code
importable), the unpacked bundle, `python load.py --base <folder> "text"`, and the output
compared with the gateway's answers to the same inputs, served by a real inference worker.

alice sells a classifier (a LoRA adapter on minilm-l6 blended with a lexical head, served
cut to 16 tokens) and a generator (tiny-causal); bob licenses both, calls them through
`POST /api/v1/models/{listing}/predict`, downloads their bundles and runs them on-prem.

The environment is built once per set of package versions and kept under
`$NICHE_VAR_DIR/bundle-loader-venv/<key>` (the key hashes the Python version and the
requirements); a fresh clone builds it in about a minute from pip's cache.
"""

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from billing.models import OfferKind
from serving.protocol import TEXT_CLASSIFICATION, TEXT_GENERATION
from tests.billing.bundle_versions import LABELS, base_source, exported, published, real_version
from tests.billing.conftest import make_active_licence, make_offer
from tests.integration.conftest import (  # noqa: F401  fixtures
    INFERENCE_POOL_ARGS,
    WorkerProcess,
    redis_url,
    require,
    shipped_base_models,
    worker_env,
)
from tests.training_worker.conftest import tiny_causal_built  # noqa: F401  fixture

# A cold start builds the environment (about 50-90 s here) inside the first test's setup.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(900),
]

ROOT = Path(__file__).resolve().parents[2]
# torch first, alone: this spec takes the CPU build from the machine's disk (any other
# would download a CUDA build of several GB); then the versions the platform itself runs.
TORCH_REQUIREMENT = "torch==2.13.0"
LOADER_PACKAGES = ("transformers", "peft", "scikit-learn", "safetensors", "numpy", "cryptography")
PROJECT_MODULES = ("billing", "training_worker", "serving", "marketplace", "accounts", "django")
TEXTS = [
    "I was charged twice for one invoice, please refund the payment",
    "the app crashes when I open the settings page",
    "thank you, lovely support team",
    "my invoice shows a refund I never asked for and the card was charged again today "
    "although support promised the payment would be reversed by Friday",  # > 16 tokens
]
PROMPTS = ["add 3 and 4:", "The patient reports", "Translate to French: good morning ->"]
MAX_NEW_TOKENS = 16


def loader_requirements() -> list[str]:
    return [
        TORCH_REQUIREMENT,
        *(f"{name}=={importlib.metadata.version(name)}" for name in LOADER_PACKAGES),
    ]


def buyer_environment() -> dict[str, str]:
    """What a buyer's shell has: no PYTHONPATH, no Django settings, and no network for
    the Hub (the base is a local folder)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PIP_FIND_LINKS", "PIP_CERT")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    return env | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _pip_install(python: Path, *requirements: str) -> None:
    command = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run(
        [*command, *requirements], env=buyer_environment(), capture_output=True, text=True,
        timeout=1200, check=False,
    )  # fmt: skip
    require(
        done.returncode == 0,
        f"pip could not install {requirements} from PyPI: {done.stderr[-2000:]}",
    )


@pytest.fixture(scope="session")
def buyer_python() -> Path:
    """The Python of a virtual environment that holds PyPI packages only, cached by the
    requirements' hash; other keys' environments are removed when a new one is built."""
    requirements = loader_requirements()
    key = hashlib.sha256(json.dumps([sys.version, requirements]).encode()).hexdigest()[:16]
    root = Path(settings.VAR_DIR) / "bundle-loader-venv"
    venv = root / key
    python = venv / "bin" / "python"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others then reuse it
        if (venv / "READY").is_file():
            return python
        for other in root.iterdir():
            if other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], env=buyer_environment(), check=True
        )
        _pip_install(python, requirements[0])
        _pip_install(python, *requirements[1:])
        seconds = time.monotonic() - started
        (venv / "READY").write_text(json.dumps({"requirements": requirements, "seconds": seconds}))
    return python


def run_buyer(python: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), *args], cwd=folder, env=buyer_environment(), capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip


def assert_nothing_of_niche_is_importable(python: Path, folder: Path) -> None:
    probe = (
        "import importlib.util, json, sys\n"
        f"found = [m for m in {PROJECT_MODULES!r} if importlib.util.find_spec(m)]\n"
        "print(json.dumps({'found': found, 'path': sys.path}))"
    )
    done = run_buyer(python, folder, "-c", probe)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["found"] == [], seen
    # Nothing on the path leads into the checkout, but the buyer's own environment (kept
    # under var/ when NICHE_VAR_DIR is the checkout's: PyPI packages only).
    venv = python.parent.parent.resolve()
    inside = [
        p
        for p in seen["path"]
        if p
        and Path(p).resolve().is_relative_to(ROOT)
        and not Path(p).resolve().is_relative_to(venv)
    ]
    assert inside == [], seen


@pytest.fixture(scope="module")
def inference_worker(worker_env):  # noqa: F811
    worker = WorkerProcess(
        worker_env, "inference", f"inf-{uuid.uuid4().hex[:6]}", INFERENCE_POOL_ARGS
    )
    try:
        worker.wait_ready(timeout=180)
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def gateway_on_a_worker(inference_worker):
    """The gateway's calls travel through Redis to the worker (unit tests run inline)."""
    from marketplace.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    yield inference_worker
    app.conf.task_always_eager = previous


def a_buyers_bundle(api, buyer, owner, moderator, version, tmp_path: Path, kind: str):
    """buyer licenses `version`'s listing to call it (`kind`) and to download it, then
    downloads and unpacks the bundle; the platform's public key lies beside it."""
    listing = published(owner, moderator, version, title=f"Specialist {version.name}")
    make_active_licence(buyer, make_offer(listing, kind))
    make_active_licence(buyer, make_offer(listing, OfferKind.DOWNLOAD))
    folder = exported(api(buyer, scopes=["read"]), version, tmp_path / "bundle")
    key = api().get("/.well-known/niche-signing-key")
    (tmp_path / "niche-signing-key.json").write_text(key.content.decode())
    return listing, folder


def a_buyers_copy_of_the_base(slug: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_source(slug), tmp_path / f"base-{slug}"))


@pytest.mark.usefixtures("shipped_base_models")
def test_load_py_in_a_fresh_venv_gives_the_gateways_probabilities(
    buyer_python, gateway_on_a_worker, alice, bob, carol, api, tmp_path
):
    # Given bob's licences on alice's blended classifier, served cut to 16 tokens
    version = real_version(
        alice, task=TEXT_CLASSIFICATION, folder=tmp_path, lexical_weight=0.4, max_seq_length=16
    )
    listing, folder = a_buyers_bundle(
        api, bob, alice, carol, version, tmp_path, OfferKind.SUBSCRIPTION
    )
    base = a_buyers_copy_of_the_base("minilm-l6", tmp_path)

    # When bob calls the gateway, and runs load.py in an environment where nothing of
    # Niche can be imported
    response = api(bob, scopes=["infer"]).post(
        f"/api/v1/models/{listing.slug}/predict", {"inputs": TEXTS}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert_nothing_of_niche_is_importable(buyer_python, folder)
    done = run_buyer(
        buyer_python, folder, "load.py", "--base", str(base),
        "--public-key", str(tmp_path / "niche-signing-key.json"), *TEXTS,
    )  # fmt: skip

    # Then load.py prints, for every text, every label's probability the gateway answered
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert (printed["model_version"], printed["task"]) == (str(version.id), TEXT_CLASSIFICATION)
    served = response.json()["predictions"]
    assert [p["input"] for p in printed["predictions"]] == TEXTS
    differences = [
        abs(ours["scores"][label] - theirs["scores"][label])
        for ours, theirs in zip(printed["predictions"], served, strict=True)
        for label in LABELS
    ]
    assert max(differences) < 1e-4, max(differences)  # equal to 4 decimals
    assert [p["label"] for p in printed["predictions"]] == [p["label"] for p in served]


@pytest.mark.usefixtures("shipped_base_models", "tiny_causal_built")
def test_load_py_in_a_fresh_venv_generates_the_gateways_greedy_text(
    buyer_python, gateway_on_a_worker, alice, bob, carol, api, tmp_path
):
    version = real_version(alice, task=TEXT_GENERATION, folder=tmp_path)
    listing, folder = a_buyers_bundle(api, bob, alice, carol, version, tmp_path, OfferKind.PER_CALL)
    base = a_buyers_copy_of_the_base("tiny-causal", tmp_path)

    served = []
    for prompt in PROMPTS:
        response = api(bob, scopes=["infer"]).post(
            f"/api/v1/models/{listing.slug}/predict",
            {"inputs": prompt, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}},
            format="json",
        )
        assert response.status_code == 200, response.json()
        served.append(response.json())
    assert_nothing_of_niche_is_importable(buyer_python, folder)
    done = run_buyer(
        buyer_python, folder, "load.py", "--base", str(base),
        "--max-new-tokens", str(MAX_NEW_TOKENS), *PROMPTS,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    completions = json.loads(done.stdout)["completions"]
    assert [(c["generated_text"], c["finish_reason"]) for c in completions] == [
        (s["generated_text"], s["finish_reason"]) for s in served
    ]
    assert any(s["generated_text"] for s in served)


@pytest.mark.usefixtures("shipped_base_models")
def test_load_py_in_a_fresh_venv_refuses_an_edited_bundle(
    buyer_python, alice, bob, carol, api, tmp_path
):
    version = real_version(alice, task=TEXT_CLASSIFICATION, folder=tmp_path, lexical_weight=0.4)
    _, folder = a_buyers_bundle(api, bob, alice, carol, version, tmp_path, OfferKind.SUBSCRIPTION)
    (folder / "evaluation.json").write_text('{"metrics": {"accuracy": 1.0}}\n')

    done = run_buyer(
        buyer_python, folder, "load.py", "--base", "unused",
        "--public-key", str(tmp_path / "niche-signing-key.json"), "hello",
    )  # fmt: skip

    assert done.returncode == 2
    assert "evaluation.json does not match its SHA-256" in done.stderr
    assert done.stdout == ""
