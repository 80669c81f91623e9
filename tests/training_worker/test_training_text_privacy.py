"""Alice's training rows cannot be read back from what buyers download or call.

Alice's notes carry a few tokens that each name one patient (a record number, a surname):
they sit in one or two rows only. After a real job (the adapter barely trains, so the
blend leans on the lexical head), none of them appears in the export bundle (the lexical
head's terms decoded as a buyer would), the card, the evaluation, the version, listing or
catalogue answers; and a buyer who calls the served model with a planted token learns
nothing the same call with an unseen token of the same shape would not tell them.
"""

import dataclasses
import io
import itertools
import json
import random
import zipfile

import numpy as np
import pytest
import torch
from django.conf import settings
from safetensors.numpy import load as load_safetensors
from sklearn.feature_extraction.text import TfidfVectorizer

from listings import services as listing_services
from serving import gateway
from serving.engine.registry import ModelRegistry
from serving.engine.runner import ClassificationRow, classify_rows
from serving.protocol import TEXT_CLASSIFICATION
from tests.training_worker.conftest import TOPICS
from training_worker import artifacts
from training_worker.ml import lexical_head
from training_worker.ml.base_models import resolve_base_model_source
from training_worker.ml.lexical_head import LexicalHead
from training_worker.ml.safe_weights import validate_safetensors_bytes
from training_worker.ml.sealed_split import near_duplicate_key
from training_worker.models import ModelVersion

# token -> (label, rows it is planted in, a token of the same shape no row holds)
PLANTED = {
    "ZQXJ-4417-record": ("cardiology", 1, "ZQXJ-4471-record"),
    "Wojciechowska": ("dermatology", 1, "Wojciechowsky"),
    "Przybyszewski": ("orthopedics", 1, "Przybyszewsko"),
    "MRN-88213-KQ": ("cardiology", 1, "MRN-88231-KQ"),
    "Szczepankiewicz": ("dermatology", 2, "Szczepankiewicq"),  # two rows, still below k
    "Grzegorzewska": ("orthopedics", 1, "Grzegorzewsky"),
    "ZX-0042-VT": ("dermatology", 1, "ZX-0024-VT"),
    "Kowalczykowa": ("cardiology", 1, "Kowalczykowy"),
}


def notes_with_planted_tokens(rows_per_label: int = 50, seed: int = 11) -> bytes:
    """The studio's 3-topic notes, plus one note per planted token (two for one of them)."""
    rng = random.Random(seed)
    lines = ["text,label"]
    for label, words in TOPICS.items():
        for n in range(rows_per_label):
            lines.append(f'"patient {n} presents with {" ".join(rng.sample(words, 3))} findings",'
                         f"{label}")  # fmt: skip
    for token, (label, copies, _) in PLANTED.items():
        for copy in range(copies):
            words = " ".join(rng.sample(TOPICS[label], 3))
            lines.append(f'"follow-up {copy} for {token}: {words} noted",{label}')
    return ("\n".join(lines) + "\n").encode()


def head_terms(payload: bytes) -> list[str]:
    """Every term of a lexical head file, decoded from its tensors as any buyer could,
    without the platform's code: each ``<block>.terms`` cut at ``<block>.offsets``."""
    tensors = load_safetensors(payload)
    terms = []
    for name, raw in tensors.items():
        if not name.endswith(".terms"):
            continue
        offsets, data = tensors[name.removesuffix(".terms") + ".offsets"], raw.tobytes()
        terms += [data[a:b].decode() for a, b in itertools.pairwise(offsets)]
    return terms


def rows_holding(term_set: set[str], texts: list[str]) -> dict[str, int]:
    """For each term, in how many distinct (near-duplicate-free) texts the head's own
    analyzers find it."""
    analyzers = [
        TfidfVectorizer(ngram_range=(1, 2)).build_analyzer(),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5)).build_analyzer(),
    ]
    distinct = {near_duplicate_key(text): text for text in texts}.values()
    counts = dict.fromkeys(term_set, 0)
    for text in distinct:
        for term in {g for analyze in analyzers for g in analyze(text)} & term_set:
            counts[term] += 1
    return counts


@pytest.mark.slow
def test_tokens_of_single_training_rows_never_reach_buyers(alice, bob, carol, studio, api):
    # Given alice's notes, some naming one patient each, trained through the studio API
    s = studio(alice)
    dataset_id = s.upload("notes.csv", notes_with_planted_tokens())
    response = s.create_job(
        base_model="minilm-l6",
        dataset=dataset_id,
        hyperparameters={"n_epochs": 1, "batch_size": 16, "learning_rate": 1e-6},
        seed=3,
    )
    assert response.status_code == 201, response.json()
    job = s.client.get(f"/api/v1/fine_tuning/jobs/{response.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    row = ModelVersion.objects.get(pk=job["fine_tuned_model"])
    train_texts = [r["text"] for r in artifacts.read_jsonl(row.job.dataset.train_path)]
    in_training = [t for t in PLANTED if any(t in text for text in train_texts)]
    assert len(in_training) >= 4  # the sealed split leaves most of them to training
    assert row.lexical_head_path, "the blend must serve a lexical head for this story"

    # And listed: a buyer reads the catalogue and the listing
    listing = listing_services.listing_create(
        owner=alice, model_version_id=row.pk, title="Clinic triage",
        summary="Routes clinic notes.", domain="healthcare", on_prem_download=True,
    )  # fmt: skip
    listing_services.listing_submit(owner=alice, listing_id=listing.id)
    listing_services.listing_approve(moderator=carol, listing_id=listing.id)
    # (the version's own endpoints answer its owner only; a licensee gets the card and
    # the evaluation in the bundle, checked below)
    buyer, owner = api(bob, scopes=["read"]), s.client
    reads = {
        "catalogue": (buyer, "/api/v1/listings"),
        "listing": (buyer, f"/api/v1/listings/{listing.slug}"),
        "version": (owner, f"/api/v1/models/{row.pk}"),
        "evaluation": (owner, f"/api/v1/models/{row.pk}/evaluation"),
        "card": (owner, f"/api/v1/models/{row.pk}/card"),
    }
    answers = {}
    for name, (client, path) in reads.items():
        response = client.get(path)
        assert response.status_code == 200, (path, response.content[:200])
        answers[name] = response.content
    assert json.loads(answers["catalogue"])["data"], "the listing is in the catalogue"

    # When the owner exports the bundle (what a download licensee gets)
    response = api(alice, scopes=["read"]).get(f"/api/v1/models/{row.pk}/export")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    bundle = {name: archive.read(name) for name in archive.namelist()}
    assert "lexical_head.safetensors" in bundle
    terms = head_terms(bundle["lexical_head.safetensors"])

    # Then no planted token is in any file or answer, and no word of one is a head term
    texts = {name: content.decode("utf-8", "replace").lower() for name, content in bundle.items()}
    texts |= {f"api:{name}": content.decode().lower() for name, content in answers.items()}
    term_set = set(terms)
    for token in PLANTED:
        for where, text in texts.items():
            assert token.lower() not in text, f"{token} is in {where}"
        words = TfidfVectorizer(ngram_range=(1, 2)).build_analyzer()(token)  # "zqxj", "4417"...
        assert term_set.isdisjoint(words), f"words of {token} are head terms"

    # And every term the head holds is shared by at least k distinct training rows
    counts = rows_holding(set(terms), train_texts)
    too_rare = {term: n for term, n in counts.items() if n < lexical_head.MIN_TRAINING_ROWS}
    assert too_rare == {}
    metadata = validate_safetensors_bytes(bundle["lexical_head.safetensors"]).metadata
    assert json.loads(metadata["config"])["min_training_rows"] == lexical_head.MIN_TRAINING_ROWS

    # When a buyer calls the served model with a planted token and with a look-alike
    _, slug, ref = gateway._served_version(row.pk)
    registry = ModelRegistry(
        resolve_base=lambda _slug: resolve_base_model_source(
            row.base_model.source, settings.MODEL_CACHE_DIR
        ),
        read_bytes=artifacts.read_bytes,
        cache_bytes=256 * 2**20,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    adapter_alone = dataclasses.replace(ref, lexical_head_path="", lexical_head_sha256="")
    base = registry.base(slug, TEXT_CLASSIFICATION, registry.adapter_head(ref))
    registry.ensure_adapters(base, [ref])  # adapter_alone shares its adapter, not its head
    probes = []
    for token, (label, _, look_alike) in PLANTED.items():
        words = " ".join(TOPICS[label][:3])
        probes += [
            f"follow-up for {token}: {words} noted",
            f"follow-up for {look_alike}: {words} noted",
        ]
    rows = [ClassificationRow(text=t, adapter=r) for r in (ref, adapter_alone) for t in probes]
    scores = classify_rows(base, rows)
    labels = list(row.labels)
    matrix = np.array([[score[label] for label in labels] for score in scores])
    served, adapter = matrix[: len(probes)], matrix[len(probes) :]
    weight = json.loads(answers["evaluation"])["blend"]["weight"]
    lexical_part = served - weight * adapter

    # Then the lexical head's share of each answer is the head's (as the bundle ships it)
    # and the same for the planted token as for its look-alike: no feature knows the token
    head = LexicalHead.from_bytes(bundle["lexical_head.safetensors"])
    by_head = head.predict_proba(probes)
    np.testing.assert_array_equal(by_head[0::2], by_head[1::2])
    np.testing.assert_allclose(lexical_part, (1 - weight) * by_head, atol=1e-5)
    assert (1 - weight) > 0.05 and not np.allclose(lexical_part, 0.0)
