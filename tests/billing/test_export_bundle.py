"""Export bundles: alice's trained adapter leaves the platform signed, loads in peft
unchanged, and only its owner or a download licensee gets it."""

import base64
import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.utils import timezone

from billing import services as billing_services
from billing.models import ExportDownload, Licence, LicenceStatus, Offer, OfferKind
from billing.terms import LicenceTerms
from listings import services as listing_services
from tests.hostile_inputs.hostile_weights import safetensors_bytes
from tests.training_worker.conftest import (  # noqa: F401  fixture
    generation_jsonl,
    tiny_causal_built,
    upload,
)
from training_worker import artifacts
from training_worker.models import BaseModel, Dataset, FineTuningJob, ModelVersion

BUNDLE_FILES = {
    "adapter_model.safetensors",
    "adapter_config.json",
    "base_model.json",
    "evaluation.json",
    "README.md",
    "LICENSE.txt",
    "load.py",
}


# --- what a buyer does with a bundle, written without the platform's code


def unpack(content: bytes, folder: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        archive.extractall(folder)
    return folder


def verification_problems(folder: Path, public_key: dict) -> list[str]:
    """What a careful buyer checks: the signature over MANIFEST.json, then every hash."""
    manifest_bytes = (folder / "MANIFEST.json").read_bytes()
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key["public_key"]))
    try:
        key.verify((folder / "MANIFEST.sig").read_bytes(), manifest_bytes)
    except InvalidSignature:
        return ["MANIFEST.sig does not verify"]
    manifest = json.loads(manifest_bytes)
    problems = []
    if manifest["signature"]["key_id"] != public_key["key_id"]:
        problems.append("signed by another key")
    listed = {entry["name"] for entry in manifest["files"]}
    on_disk = {p.name for p in folder.iterdir()} - {"MANIFEST.json", "MANIFEST.sig"}
    if listed != on_disk:
        problems.append(f"files differ from the manifest: {sorted(listed ^ on_disk)}")
    for entry in manifest["files"]:
        data = (folder / entry["name"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"] or len(data) != entry["size"]:
            problems.append(f"{entry['name']} does not match its hash")
    return problems


# --- rows


def trained_version(client, capture) -> ModelVersion:
    """A real LoRA adapter on the tiny causal base, trained through the studio API."""
    with capture(execute=True):
        response = client.post(
            "/api/v1/datasets", {"file": upload("qa.jsonl", generation_jsonl(60))}
        )
    assert response.status_code == 202, response.json()
    with capture(execute=True):
        response = client.post(
            "/api/v1/fine_tuning/jobs",
            {"base_model": "tiny-causal", "dataset": response.json()["id"], "seed": 5,
             "hyperparameters": {"n_epochs": 3, "learning_rate": 0.003}},
            format="json",
        )  # fmt: skip
    assert response.status_code == 201, response.json()
    job = FineTuningJob.objects.get(pk=response.json()["id"])
    assert job.status == "succeeded", job.error_message
    return job.fine_tuned_model


def stored_version(owner, tmp_path: Path) -> ModelVersion:
    """A version whose files are really in storage (a well-formed safetensors file that is
    not a real adapter): enough for who-may-download stories, which never load the weights."""
    files = {}
    weights = safetensors_bytes({"w": ("F32", [25, 4], bytes(400))})
    for name, content in (("adapter_model.safetensors", weights),
                          ("adapter_config.json", b'{"r": 8}')):  # fmt: skip
        path = tmp_path / owner.email / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        files[name] = artifacts.store_content_addressed(path)
    dataset = Dataset.objects.create(
        owner=owner, name="d", filename="d.csv", size_bytes=1, sha256="d" * 64, status="ready"
    )
    job = FineTuningJob.objects.create(
        owner=owner, base_model=BaseModel.objects.get(slug="minilm-l6"), dataset=dataset,
        task="text-classification", seed=1, status="succeeded",
    )  # fmt: skip
    (adapter_path, adapter_sha, adapter_size) = files["adapter_model.safetensors"]
    (config_path, config_sha, config_size) = files["adapter_config.json"]
    return ModelVersion.objects.create(
        owner=owner, job=job, base_model=job.base_model, name="minilm-l6:triage:0001",
        task="text-classification", labels=["urgent", "routine"], adapter_path=adapter_path,
        adapter_sha256=adapter_sha, adapter_size=adapter_size, config_path=config_path,
        config_sha256=config_sha, config_size=config_size, dataset_sha256=dataset.sha256,
        run_record={}, evaluation={"task": "text-classification", "metrics": {"accuracy": 0.9}},
        card="---\nlibrary_name: peft\n---\n# triage\n",
    )  # fmt: skip


def published_listing(owner, moderator, version, **terms):
    listing = listing_services.listing_create(
        owner=owner, model_version_id=version.id, title="Radiology triage",
        summary="Routes radiology reports.", domain="healthcare", on_prem_download=True, **terms,
    )  # fmt: skip
    listing_services.listing_submit(owner=owner, listing_id=listing.id)
    return listing_services.listing_approve(moderator=moderator, listing_id=listing.id)


def download_licence(buyer, listing, *, status=LicenceStatus.ACTIVE) -> Licence:
    offer = Offer.objects.create(
        listing=listing, kind=OfferKind.DOWNLOAD, currency="usd", unit_amount=49_00
    )
    return Licence.objects.create(
        buyer=buyer, listing=listing, offer=offer, kind=OfferKind.DOWNLOAD, status=status,
        terms=LicenceTerms.of_listing(listing).to_json(), activated_at=timezone.now(),
    )  # fmt: skip


def signing_key(client) -> dict:
    response = client.get("/.well-known/niche-signing-key")
    assert response.status_code == 200
    return response.json()


# --- stories


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_causal_built")
def test_bundle_loads_in_peft_like_the_platform_and_its_signature_verifies(
    alice, bob, carol, api, django_capture_on_commit_callbacks, tmp_path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training_worker.ml.inference import load_adapter_model

    # Given alice's adapter, trained on the platform and listed with a download offer
    version = trained_version(api(alice), django_capture_on_commit_callbacks)
    listing = published_listing(alice, carol, version, commercial_use=True)
    licence = download_licence(bob, listing)

    # When bob, who bought the download, exports it
    response = api(bob, scopes=["read"]).get(f"/api/v1/models/{version.id}/export")

    # Then a zip of exactly the promised files arrives, and the download is on record
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    content = b"".join(response.streaming_content)
    folder = unpack(content, tmp_path / "bundle")
    assert {p.name for p in folder.iterdir()} == BUNDLE_FILES | {"MANIFEST.json", "MANIFEST.sig"}
    manifest_bytes = (folder / "MANIFEST.json").read_bytes()
    download = ExportDownload.objects.get()
    assert (download.user, download.licence, download.model_version) == (bob, licence, version)
    assert download.manifest_sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    assert response["X-Niche-Manifest-SHA256"] == download.manifest_sha256

    # The adapter is byte for byte what the platform stored; the rest describes it
    assert hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest() == (
        version.adapter_sha256
    )
    base = json.loads((folder / "base_model.json").read_text())
    assert (base["id"], base["revision"]) == ("cache:tiny-causal", None)
    assert json.loads((folder / "evaluation.json").read_text()) == version.evaluation
    assert (folder / "README.md").read_text() == version.card
    licence_text = (folder / "LICENSE.txt").read_text()
    assert "Licensee: Bob <bob@example.com>" in licence_text
    assert f"Issued: {timezone.now():%Y-%m-%d}" in licence_text
    assert "Commercial use: allowed" in licence_text and str(licence.id) in licence_text

    # The signature verifies with the key the well-known URL publishes (anyone may read it)
    public_key = signing_key(api())
    assert public_key["algorithm"] == "Ed25519"
    assert verification_problems(folder, public_key) == []

    # Loading the unpacked folder with PeftModel.from_pretrained gives the platform's outputs
    base_path = settings.MODEL_CACHE_DIR / "tiny-causal"
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    batch = tokenizer(["add 3 and 4:", "add 1 and 2:"], return_tensors="pt", padding=True)
    buyer_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path), folder
    ).eval()
    platform_dir = tmp_path / "platform"
    artifacts.download_to(version.adapter_path, platform_dir / "adapter_model.safetensors")
    artifacts.download_to(version.config_path, platform_dir / "adapter_config.json")
    platform_model, _ = load_adapter_model(base_path, platform_dir, "text-generation")
    with torch.no_grad():
        buyer_logits = buyer_model(**batch).logits
        platform_logits = platform_model(**batch).logits
        with buyer_model.disable_adapter():
            base_logits = buyer_model(**batch).logits
    assert torch.equal(buyer_logits, platform_logits)
    assert not torch.allclose(buyer_logits, base_logits)  # the adapter does something


def test_a_tampered_file_or_manifest_fails_verification(alice, api, tmp_path):
    # Given alice's own bundle, which verifies as downloaded
    version = stored_version(alice, tmp_path)
    response = api(alice, scopes=["read"]).get(f"/api/v1/models/{version.id}/export")
    assert response.status_code == 200
    content = b"".join(response.streaming_content)
    public_key = signing_key(api())
    assert verification_problems(unpack(content, tmp_path / "good"), public_key) == []

    # When someone changes one byte of the adapter, then the hash check catches it
    folder = unpack(content, tmp_path / "file")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(b"X" + weights.read_bytes()[1:])
    assert verification_problems(folder, public_key) == [
        "adapter_model.safetensors does not match its hash"
    ]

    # When they also rewrite the manifest to match, then the signature catches it
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    for entry in manifest["files"]:
        if entry["name"] == "adapter_model.safetensors":
            entry["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert verification_problems(folder, public_key) == ["MANIFEST.sig does not verify"]

    # And a licence text edited to widen the terms fails too
    folder = unpack(content, tmp_path / "licence")
    (folder / "LICENSE.txt").write_text("Commercial use: allowed\n")
    assert verification_problems(folder, public_key) == ["LICENSE.txt does not match its hash"]

    # The owner's copy says so, and the download is recorded without a licence
    assert "Owner's copy" in (tmp_path / "good" / "LICENSE.txt").read_text()
    assert ExportDownload.objects.filter(user=alice, licence=None, model_version=version).count()


def test_a_revoked_licence_stops_downloads_at_once(alice, bob, carol, api, tmp_path):
    version = stored_version(alice, tmp_path)
    listing = published_listing(alice, carol, version)
    licence = download_licence(bob, listing)
    client = api(bob, scopes=["read"])
    assert client.get(f"/api/v1/models/{version.id}/export").status_code == 200

    # When the licence is revoked, then the very next download is refused
    billing_services.licence_revoke(licence_id=licence.pk, reason="chargeback")
    response = client.get(f"/api/v1/models/{version.id}/export")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "licence_required"
    assert ExportDownload.objects.filter(user=bob).count() == 1  # only the first


def test_a_buyer_without_a_download_licence_gets_403(alice, bob, mallory, carol, api, tmp_path):
    version = stored_version(alice, tmp_path)
    listing = published_listing(alice, carol, version)
    # bob holds a calling licence, not a download one; mallory holds nothing
    calling = Offer.objects.create(
        listing=listing, kind=OfferKind.SUBSCRIPTION, currency="usd", unit_amount=20_00,
        included_calls=1000, overage="refuse",
    )  # fmt: skip
    Licence.objects.create(
        buyer=bob, listing=listing, offer=calling, kind=OfferKind.SUBSCRIPTION,
        status=LicenceStatus.ACTIVE, terms=LicenceTerms.of_listing(listing).to_json(),
    )  # fmt: skip
    download_licence(mallory, listing, status=LicenceStatus.PENDING)  # never paid

    for buyer in (bob, mallory):
        response = api(buyer, scopes=["read"]).get(f"/api/v1/models/{version.id}/export")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "licence_required"
    assert not ExportDownload.objects.exists()


def test_a_version_never_listed_is_404_to_others_and_anonymous_is_401(
    alice, mallory, api, tmp_path
):
    version = stored_version(alice, tmp_path)

    response = api(mallory, scopes=["read"]).get(f"/api/v1/models/{version.id}/export")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert api().get(f"/api/v1/models/{version.id}/export").status_code == 401
    assert not ExportDownload.objects.exists()


def test_a_key_without_the_read_scope_cannot_export(alice, api, tmp_path):
    version = stored_version(alice, tmp_path)

    response = api(alice, scopes=["infer"]).get(f"/api/v1/models/{version.id}/export")

    assert response.status_code == 403
    assert not ExportDownload.objects.exists()


def test_a_head_request_answers_who_may_download_and_records_nothing(
    alice, bob, mallory, carol, api, tmp_path
):
    version = stored_version(alice, tmp_path)
    download_licence(bob, published_listing(alice, carol, version))
    url = f"/api/v1/models/{version.id}/export"

    assert api(bob, scopes=["read"]).head(url).status_code == 200
    assert api(alice, scopes=["read"]).head(url).status_code == 200
    assert api(mallory, scopes=["read"]).head(url).status_code == 404  # as GET models/<id>
    assert not ExportDownload.objects.exists()


# --- one answer for strangers (issue 20, defect 15)


def same_answer(first, second) -> bool:
    return (first.status_code, first["Content-Type"], first.content) == (
        second.status_code, second["Content-Type"], second.content,
    )  # fmt: skip


def test_a_stranger_gets_from_export_exactly_what_the_version_endpoint_answers(
    alice, mallory, carol, api, tmp_path
):
    # Given alice's version on her published listing, one she never listed, and an id
    # that names nothing
    listed = stored_version(alice, tmp_path / "listed")
    published_listing(alice, carol, listed)
    unlisted = stored_version(alice, tmp_path / "unlisted")
    nothing = "00000000-0000-4000-8000-000000000000"

    for stranger in (mallory, carol):  # a buyer with no licence, a moderator
        client = api(stranger, scopes=["read"])
        for version_id in (listed.id, unlisted.id, nothing):
            # When they ask for the version and for its export bundle
            version = client.get(f"/api/v1/models/{version_id}")
            export = client.get(f"/api/v1/models/{version_id}/export")
            head = client.head(f"/api/v1/models/{version_id}/export")

            # Then both answer the same bytes: nothing tells which of the three exists
            assert version.status_code == 404
            assert version.json()["error"]["code"] == "model_not_found"
            assert same_answer(export, version), (version_id, export.content)
            assert head.status_code == version.status_code
    assert not ExportDownload.objects.exists()


def test_a_licensee_of_the_listing_still_hears_that_a_download_licence_is_needed(
    alice, bob, carol, api, tmp_path
):
    # bob held a download licence, since revoked: he knows the version, so the answer may
    # say what he lacks
    version = stored_version(alice, tmp_path)
    listing = published_listing(alice, carol, version)
    download_licence(bob, listing, status=LicenceStatus.REVOKED)

    response = api(bob, scopes=["read"]).get(f"/api/v1/models/{version.id}/export")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "licence_required"
    assert not ExportDownload.objects.exists()


def legacy_lexical_head() -> bytes:
    """A lexical head as format 1 wrote it: every term of its training rows kept, among
    them a token of one row (a record number), and no k in its config."""
    from safetensors.numpy import load, save

    from training_worker.ml import lexical_head
    from training_worker.ml.safe_weights import validate_safetensors_bytes

    texts = [f"urgent scan needed {i}" for i in range(6)] + [
        f"routine check booked {i}" for i in range(6)
    ]
    texts[0] += " MRN-88213-KQ"
    head = lexical_head.fit(texts, [0] * 6 + [1] * 6, n_labels=2, seed=0, min_training_rows=1)
    payload = dataclasses.replace(head, weight=0.5).to_bytes()
    metadata = dict(validate_safetensors_bytes(payload).metadata)
    config = json.loads(metadata["config"])
    del config["min_training_rows"]
    return save(load(payload), metadata={**metadata, "format_version": "1",
                                         "config": json.dumps(config)})  # fmt: skip


def test_a_lexical_head_written_before_rare_terms_were_dropped_is_never_shipped(
    alice, bob, carol, api, tmp_path
):
    # Given a version whose stored head predates the pruning (it holds a row's record number)
    version = stored_version(alice, tmp_path)
    path = tmp_path / "lexical_head.safetensors"
    path.write_bytes(legacy_lexical_head())
    assert b"88213" in path.read_bytes()
    (version.lexical_head_path, version.lexical_head_sha256, version.lexical_head_size) = (
        artifacts.store_content_addressed(path)
    )
    version.save()
    listing = published_listing(alice, carol, version)
    download_licence(bob, listing)

    # When its owner or a download licensee asks for the bundle
    for user in (alice, bob):
        response = api(user, scopes=["read"]).get(f"/api/v1/models/{version.id}/export")

        # Then it is refused, naming the file and why, and no download is recorded
        assert response.status_code == 409, response.content[:300]
        error = response.json()["error"]
        assert error["code"] == "adapter_file_refused"
        assert error["fields"] == {"lexical_head.safetensors": ["lexical_head_outdated"]}
        assert "Train the version again" in error["message"]
    assert not ExportDownload.objects.filter(model_version=version).exists()
