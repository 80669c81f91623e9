"""One fixture world for the hardening suites: every persona and a real object of each kind.

alice (owner expert) sells a published listing with offers and owns a draft, a real
dataset whose sealed split carries planted markers, a job and a model version. eve is
another expert with her own private objects. bob holds an active licence on alice's
listing, dave is a buyer without one, carol moderates, root administers, sam is
suspended. Each private string (emails, key prefixes, dataset names, job ids, draft titles)
carries a unique marker, so a body that leaks another user's data can be found by text.

`build_world()` writes it through the real services; callers wrap it in a transaction
they roll back (see tests/hardening/conftest.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import MODERATORS_GROUP, ExpertProfile, User
from accounts.services import api_key_create, user_mark_email_verified
from billing.models import OfferKind
from listings import services as listing_services
from listings.models import Listing
from tests.billing.conftest import make_active_licence, make_offer, make_payable
from tests.listings.conftest import make_version
from training_worker import artifacts
from training_worker import services as studio_services
from training_worker.models import Dataset

PASSWORD = "correct horse battery"
SCOPES = ("read", "train", "infer", "keys")
# Every persona the matrix and the fuzzer act as; the key personas act as alice.
PERSONAS = (
    "anonymous",
    "owner",  # alice, session
    "other_expert",  # eve, session
    "buyer_licensed",  # bob, session
    "buyer_unlicensed",  # dave, session
    "moderator",  # carol, session
    "admin",  # root, session
    "suspended",  # sam, session (is_active=False) and a key that must stop working
    "key_read",  # alice's keys, one scope each
    "key_train",
    "key_infer",
    "key_keys",
)


def marker(kind: str, who: str) -> str:
    return f"zq{kind}{who}mark"


@dataclass
class World:
    users: dict[str, User]
    keys: dict[str, str]  # persona -> plaintext key ("key_read", ..., and each user's "full")
    key_ids: dict[str, str]
    listing: Listing  # alice's, published, with offers; bob holds a licence
    draft: Listing  # alice's, never submitted
    eve_listing: Listing  # eve's draft
    offer_id: str
    licence_id: str
    dataset_id: str  # alice's real dataset (validated: train + sealed split)
    eve_dataset_id: str
    job_id: str  # alice's
    eve_job_id: str
    version_id: str  # alice's version on the published listing
    draft_version_id: str
    eve_version_id: str
    review_id: int
    batch_file_id: str  # alice's input file of batch requests
    batch_id: str  # alice's batch over it (waiting for a worker)
    evaluation_id: str = ""  # bob's private evaluation of alice's listing (finished)
    sealed_markers: list[str] = field(default_factory=list)
    benchmark: object = None  # an evidence.BenchmarkSet; its rows' markers are sealed ones
    private: dict[str, list[str]] = field(default_factory=dict)  # user -> marker strings

    def markers_not_of(self, *users: str) -> dict[str, str]:
        """Private marker -> owner, for every user but `users`."""
        return {m: who for who, ms in self.private.items() if who not in users for m in ms}


def _user(key: str, **fields) -> User:
    """A persona who has verified their email address (keys and trials need it)."""
    user = User.objects.create_user(
        email=f"{key}.{marker('email', key)}@example.com", password=PASSWORD, **fields
    )
    return user_mark_email_verified(user=user)


def _sealed_csv() -> bytes:
    """A 3-label data set: every row carries its own marker, so each sealed row is known."""
    words = {"cardio": "heart ecg valve", "derma": "rash mole lesion", "ortho": "knee bone cast"}
    lines = ["text,label"]
    for label, text in words.items():
        for n in range(40):
            lines.append(f'"patient {n} {text} zqrow{label}{n}mark",{label}')
    return ("\n".join(lines) + "\n").encode()


def _dataset(owner: User, name: str) -> Dataset:
    upload = SimpleUploadedFile("rows.csv", _sealed_csv(), content_type="text/csv")
    dataset = studio_services.dataset_upload(owner=owner, file=upload, name=name)
    dataset = studio_services.dataset_validate(dataset_id=dataset.id)
    assert dataset.status == "ready", dataset.report
    return dataset


def _listing(owner: User, version, title: str, **terms) -> Listing:
    return listing_services.listing_create(
        owner=owner, model_version_id=version.id, title=title,
        summary="Routes reports.", domain="healthcare", **terms,
    )  # fmt: skip


def _batch(owner: User, listing: Listing):
    """A file of two predict requests and a batch over it (never sent: the world's
    transaction is rolled back, so its task is not)."""
    from serving.batches import PREDICT, batch_create, batch_file_upload

    rows = [
        {"custom_id": f"{marker('request', 'alice')}-{n}", "method": "POST",
         "url": f"/api/v1/models/{listing.slug}/predict", "body": {"inputs": ["x"]}}
        for n in range(2)
    ]  # fmt: skip
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    upload = SimpleUploadedFile(f"requests {marker('batchfile', 'alice')}.jsonl", content)
    batch_file = batch_file_upload(owner=owner, file=upload, purpose="batch")
    batch = batch_create(
        owner=owner, api_key=None, input_file_id=batch_file.id, endpoint=PREDICT,
        metadata={"note": marker("batch", "alice")},
    )  # fmt: skip
    return batch_file, batch


def _private_evaluation(bob: User, listing: Listing):
    """bob's finished private evaluation of alice's listing: its file name and a figure's
    label are bob's private strings (alice, the expert, may see only a count)."""
    from evidence.models import (
        CandidateCharge,
        EvaluationStatus,
        PrivateEvaluation,
        PrivateEvaluationCandidate,
    )

    figures = {"key": f"listing:{listing.slug}", "label": marker("peval-row", "bob"),
               "value": 0.5, "ci_low": 0.4, "ci_high": 0.6}  # fmt: skip
    evaluation = PrivateEvaluation.objects.create(
        owner=bob, task=listing.task, status=EvaluationStatus.SUCCEEDED,
        filename=f"{marker('peval-file', 'bob')}.jsonl", row_count=60, labels=["a", "b"],
        result={"task": listing.task, "rows": 60, "labels": ["a", "b"],
                "metric": {"name": "accuracy", "label": "Accuracy", "higher_is_better": True},
                "contenders": [figures], "pairs": [], "warnings": []},
    )  # fmt: skip
    PrivateEvaluationCandidate.objects.create(
        evaluation=evaluation, listing=listing, version=listing.live_version, position=0,
        charge=CandidateCharge.FREE,
    )  # fmt: skip
    return evaluation


def _benchmark(moderator: User, listing: Listing):
    """A sealed benchmark set whose every row carries a marker, and alice's listing ranked on
    it (the entry written as the scoring task writes it; no engine in this world)."""
    from evidence.benchmarks import benchmark_set_create
    from evidence.models import LeaderboardEntry

    rows = [{"text": f"bench {marker('benchrow', n)} words", "label": "ab"[n % 2]}
            for n in range(30)]  # fmt: skip
    upload = SimpleUploadedFile("bench.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    benchmark = benchmark_set_create(
        moderator=moderator, title="World benchmark", task="text-classification",
        rows_file=upload, sources=[{"name": "World rows", "licence": "CC0-1.0"}],
    )  # fmt: skip
    LeaderboardEntry.objects.create(
        benchmark=benchmark, listing=listing, version=listing.live_version, metric="accuracy",
        value=0.8, ci_low=0.7, ci_high=0.9, rows=30,
        detail={"version_number": 1, "base_model": "minilm-l6", "rows_scored": 30, "errors": 0},
    )  # fmt: skip
    return benchmark, [marker("benchrow", n) for n in range(30)]


def build_world() -> World:
    users = {
        "owner": _user("alice", display_name="Alice", is_expert=True),
        "other_expert": _user("eve", display_name="Eve", is_expert=True),
        "buyer_licensed": _user("bob", display_name="Bob"),
        "buyer_unlicensed": _user("dave", display_name="Dave"),
        "moderator": _user("carol", display_name="Carol", is_staff=True),
        "admin": _user("root", display_name="Root", is_staff=True, is_superuser=True),
        "suspended": _user("sam", display_name="Sam"),
    }
    for persona in ("owner", "other_expert"):
        ExpertProfile.objects.create(user=users[persona], headline="Specialist")
    users["moderator"].groups.add(Group.objects.get(name=MODERATORS_GROUP))
    alice, eve, bob = users["owner"], users["other_expert"], users["buyer_licensed"]
    private: dict[str, list[str]] = {who: [user.email] for who, user in users.items()}

    keys, key_ids = {}, {}
    for scope in SCOPES:
        key, plaintext = api_key_create(user=alice, name=f"k-{scope}", scopes=[scope])
        keys[f"key_{scope}"], key_ids[f"key_{scope}"] = plaintext, str(key.id)
        private["owner"].append(key.prefix)
    for who, user in users.items():
        key, plaintext = api_key_create(user=user, name="full", scopes=list(SCOPES))
        keys[f"{who}:full"], key_ids[f"{who}:full"] = plaintext, str(key.id)
        private[who].append(key.prefix)
    # Suspended after its key was minted: the key must stop working with the account.
    users["suspended"].is_active = False
    users["suspended"].save(update_fields=["is_active"])

    dataset = _dataset(alice, f"alice data {marker('dataset', 'alice')}")
    eve_dataset = _dataset(eve, f"eve data {marker('dataset', 'eve')}")
    private["owner"].append(dataset.name)
    private["other_expert"].append(eve_dataset.name)
    sealed_rows = artifacts.read_jsonl(dataset.sealed_path)
    assert sealed_rows, "the sealed split is empty"
    sealed_markers = [word for row in sealed_rows for word in json.dumps(row).split()
                      if word.startswith("zqrow")]  # fmt: skip
    sealed_markers = [m.strip('",') for m in sealed_markers]

    moderator = users["moderator"]
    version, spare, eve_version = make_version(alice), make_version(alice), make_version(eve)
    listing = _listing(alice, version, "Triage of reports", commercial_use=True,
                       on_prem_download=True)  # fmt: skip
    listing_services.listing_submit(owner=alice, listing_id=listing.id)
    listing = listing_services.listing_approve(moderator=moderator, listing_id=listing.id)
    draft = _listing(alice, make_version(alice), f"Draft {marker('draft', 'alice')}")
    eve_listing = _listing(eve, eve_version, f"Draft {marker('draft', 'eve')}")
    private["owner"].append(draft.title)
    private["other_expert"].append(eve_listing.title)
    make_payable(alice)
    offer = make_offer(listing, OfferKind.SUBSCRIPTION)
    make_offer(listing, OfferKind.DOWNLOAD)
    licence = make_active_licence(bob, offer)
    private["buyer_licensed"].append(str(licence.id))
    review = listing_services.review_upsert(author=bob, listing=listing, rating=5, text="Good")

    benchmark, benchmark_markers = _benchmark(moderator, listing)
    sealed_markers += benchmark_markers
    batch_file, batch = _batch(alice, listing)
    private["owner"] += [batch_file.filename, marker("request", "alice"), marker("batch", "alice")]

    evaluation = _private_evaluation(bob, listing)
    private["buyer_licensed"] += [evaluation.id, evaluation.filename, marker("peval-row", "bob")]

    job, eve_job = version.job, eve_version.job
    private["owner"].append(str(job.id))
    private["other_expert"].append(str(eve_job.id))

    return World(
        users=users,
        keys=keys,
        key_ids=key_ids,
        listing=listing,
        draft=draft,
        eve_listing=eve_listing,
        offer_id=str(offer.id),
        licence_id=str(licence.id),
        dataset_id=str(dataset.id),
        eve_dataset_id=str(eve_dataset.id),
        job_id=str(job.id),
        eve_job_id=str(eve_job.id),
        version_id=str(version.id),
        draft_version_id=str(spare.id),
        eve_version_id=str(eve_version.id),
        review_id=review.id,
        batch_file_id=batch_file.id,
        batch_id=batch.id,
        evaluation_id=evaluation.id,
        sealed_markers=sealed_markers,
        benchmark=benchmark,
        private=private,
    )
