"""Alice cannot shop for a lucky sealed split by uploading padded copies of one file.

Near-duplicate datasets of one owner form a data family with one sealed split; every sealed
evaluation on the family counts, and the lift's interval is corrected for them.
"""

import csv
import io
import json
import random

import pytest
from django.test import Client

from tests.conftest import make_user
from tests.training_worker.conftest import classification_csv, upload
from training_worker import artifacts, runner, services
from training_worker.ml import evaluation
from training_worker.ml.data_families import SEALED_ROWS_MISSING
from training_worker.ml.evaluation_report import read_evaluation
from training_worker.ml.recipe import TrainingResult
from training_worker.ml.sealed_split import near_duplicate_key
from training_worker.models import DataFamily, Dataset, FineTuningJob, JobStatus, ModelVersion


@pytest.fixture
def upload_ready(api, django_capture_on_commit_callbacks):
    """Upload as a persona through the API and run its validation inline."""

    def do(user, content: bytes, filename: str = "notes.csv") -> Dataset:
        with django_capture_on_commit_callbacks(execute=True):
            response = api(user).post("/api/v1/datasets", {"file": upload(filename, content)})
        assert response.status_code == 202, response.json()
        return Dataset.objects.get(pk=response.json()["id"])

    return do


def csv_rows(content: bytes) -> list[tuple[str, str]]:
    return [tuple(row) for row in list(csv.reader(io.StringIO(content.decode())))[1:]]


def as_csv(rows) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows([("text", "label"), *rows])
    return out.getvalue().encode()


def sealed_inputs(dataset: Dataset) -> set[str]:
    return {near_duplicate_key(row["text"]) for row in artifacts.read_jsonl(dataset.sealed_path)}


def padded_variants(original: Dataset) -> dict[str, tuple[str, bytes]]:
    """Ten ways alice might pad her file hoping for another sealed split."""
    rows = csv_rows(classification_csv())
    rng = random.Random(5)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    labels = ("cardiology", "dermatology", "orthopedics")
    extra = [(f"patient {n} follow-up visit about {label} care", label)
             for n in range(10) for label in labels]  # fmt: skip
    junk = [(f"qq{rng.randrange(10**8)}zz", labels[n % 3]) for n in range(9)]
    trained = [near_duplicate_key(r["text"]) for r in artifacts.read_jsonl(original.train_path)]
    dropped = set(rng.sample(trained, 12))  # alice happens to drop only training rows
    subset = [row for row in rows if near_duplicate_key(row[0]) not in dropped]
    jsonl = "\n".join(json.dumps({"text": t, "label": label}) for t, label in rows) + "\n"
    return {
        "extra rows": ("notes.csv", as_csv(rows + extra)),
        "reordered": ("notes.csv", as_csv(shuffled)),
        "duplicated rows": ("notes.csv", as_csv(rows + rows[::3])),
        "changed case": ("notes.csv", as_csv([(t.upper(), label) for t, label in rows])),
        "changed punctuation": (
            "notes.csv",
            as_csv([(f"{t.replace(' with', ', with')}!", label) for t, label in rows]),
        ),
        "a subset": ("notes.csv", as_csv(subset)),
        "junk rows appended": ("notes.csv", as_csv(rows + junk)),
        "as JSON lines": ("notes.jsonl", jsonl.encode()),
        "renamed file, reversed": ("final_v2.csv", as_csv(rows[::-1])),
        "all of it at once": (
            "notes.csv",
            as_csv([(t.lower() + " .", label) for t, label in subset[::-1] + subset[:5]] + extra),
        ),
    }


def test_every_padded_variant_of_a_file_is_sealed_on_the_same_rows(alice, upload_ready):
    original = upload_ready(alice, classification_csv())
    expected = sealed_inputs(original)

    variants = padded_variants(original)

    assert len(variants) == 10 and original.status == "ready"
    for name, (filename, content) in variants.items():
        variant = upload_ready(alice, content, filename)
        assert variant.status == "ready", (name, variant.report.get("errors"))
        assert variant.family_id == original.family_id, name
        assert sealed_inputs(variant) == expected, name
        trained = {near_duplicate_key(r["text"]) for r in artifacts.read_jsonl(variant.train_path)}
        assert not trained & expected, name
        assert variant.report["sealed_split"]["data_family"] == {
            "id": str(original.family_id),
            "founded_by_this_dataset": False,
            "first_dataset": str(original.pk),
        }
    assert DataFamily.objects.filter(owner=alice).count() == 1
    assert original.report["sealed_split"]["data_family"]["founded_by_this_dataset"] is True


def test_a_genuinely_different_dataset_founds_a_family_of_its_own(alice, upload_ready):
    original = upload_ready(alice, classification_csv())
    lines = ["text,label"] + [
        f"invoice {n} for {item} was charged twice,{label}"
        for label, items in {"billing": ["seats", "storage"], "refund": ["gift", "order"]}.items()
        for n in range(20)
        for item in items
    ]

    other = upload_ready(alice, ("\n".join(lines) + "\n").encode(), "billing.csv")

    assert other.status == "ready"
    assert other.family_id not in (None, original.family_id)
    assert other.report["sealed_split"]["data_family"]["founded_by_this_dataset"] is True


def test_another_owners_identical_file_never_shares_a_family(alice, upload_ready):
    dave = make_user("dave@example.com", display_name="Dave", is_expert=True)
    alices = upload_ready(alice, classification_csv())

    daves = upload_ready(dave, classification_csv())

    assert daves.status == "ready"
    assert daves.family_id != alices.family_id
    assert daves.family.owner == dave and daves.family.root_dataset_id == daves.pk


def test_a_variant_without_the_held_out_rows_is_refused_rather_than_redrawn(
    alice, api, upload_ready
):
    original = upload_ready(alice, classification_csv())
    training_only = [(r["text"], r["label"]) for r in artifacts.read_jsonl(original.train_path)]

    variant = upload_ready(alice, as_csv(training_only), "cleaned.csv")

    body = api(alice).get(f"/api/v1/datasets/{variant.pk}").json()
    assert body["status"] == "invalid"
    [error] = body["report"]["errors"]
    assert error["code"] == SEALED_ROWS_MISSING
    assert f"keeps 0 of the {original.sealed_rows} held-out inputs" in error["message"]
    assert variant.sealed_path == "" and variant.family_id is None
    assert DataFamily.objects.filter(owner=alice).count() == 1


def test_the_family_stores_keyed_digests_never_the_text(alice, upload_ready):
    original = upload_ready(alice, classification_csv())
    family = original.family

    stored = bytes(family.input_keys) + bytes(family.sealed_keys)

    assert len(bytes(family.input_keys)) == 8 * original.rows_usable
    assert len(bytes(family.sealed_keys)) == 8 * original.sealed_rows
    for row in artifacts.read_jsonl(original.sealed_path):
        assert near_duplicate_key(row["text"]).encode()[:6] not in stored
    assert b"patient" not in stored


# --- attempts: every sealed evaluation on the family counts ---------------------------


def fake_training(spec, callbacks):
    """What a job's evaluation would write, without training: the same predictions on the
    family's sealed rows (read in a fixed order), corrected for the spec's attempt number."""
    sealed = sorted(spec.sealed_rows, key=lambda row: near_duplicate_key(row["text"]))
    truth = [spec.labels.index(row["label"]) for row in sealed]
    guessed = [t if i % 4 else (t + 1) % len(spec.labels) for i, t in enumerate(truth)]
    report = evaluation.classification_report(
        truth, guessed, spec.labels, 0, [0] * len(truth), "embedding", seed=1, resamples=300,
        sealed_evaluations=spec.evaluation_options.sealed_evaluations,
    )  # fmt: skip
    adapter = spec.output_dir / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_model.safetensors").write_bytes(
        b"weights of " + spec.output_dir.name.encode()
    )
    (adapter / "adapter_config.json").write_text("{}")
    return TrainingResult(
        adapter_dir=adapter, resolved_hyperparameters={}, step_metrics=[], evaluation=report,
        library_versions={}, device="cpu", trained_tokens=0, wall_seconds=0.0,
        examples_per_s=0.0,
    )  # fmt: skip


@pytest.fixture
def evaluate_without_training(monkeypatch, settings):
    settings.EVALUATION_GENERALIST_LLM = ""
    monkeypatch.setattr(runner, "run_fine_tune", fake_training)

    def run(job: FineTuningJob) -> ModelVersion:
        assert runner.job_run(job_id=job.pk, worker="w1@host") == JobStatus.SUCCEEDED
        return ModelVersion.objects.get(job=job)

    return run


def job_on(dataset: Dataset) -> FineTuningJob:
    return services.job_create(
        owner=dataset.owner, base_model="minilm-l6", dataset_id=dataset.pk, seed=1
    )


def test_the_second_variants_version_records_one_sealed_evaluation_before_it(
    alice, upload_ready, evaluate_without_training
):
    original = upload_ready(alice, classification_csv())
    variant = upload_ready(alice, padded_variants(original)["changed case"][1])
    first_job, second_job = job_on(original), job_on(variant)

    first = read_evaluation(evaluate_without_training(first_job).evaluation)
    second = read_evaluation(evaluate_without_training(second_job).evaluation)

    assert (first.prior_sealed_evaluations, second.prior_sealed_evaluations) == (0, 1)
    assert second.lift_interval_label == (
        "95% interval, Bonferroni-corrected for 2 sealed evaluations on this data"
    )
    plain, shown = first.strongest_baseline.lift, second.strongest_baseline.lift
    assert shown.delta == plain.delta  # the same predictions on the same sealed rows...
    assert shown.uncorrected_interval == (plain.ci_low, plain.ci_high)
    assert shown.ci_low <= plain.ci_low and shown.ci_high >= plain.ci_high  # ...shown wider
    assert shown.ci_high - shown.ci_low > plain.ci_high - plain.ci_low


def test_attempts_follow_creation_order_whichever_job_finishes_first(
    alice, upload_ready, evaluate_without_training
):
    original = upload_ready(alice, classification_csv())
    variant = upload_ready(alice, padded_variants(original)["reordered"][1])
    cancelled = job_on(original)
    services.job_cancel(owner=alice, job_id=cancelled.pk)  # never evaluated: not an attempt
    earlier, later = job_on(original), job_on(variant)
    dave = make_user("dave@example.com", display_name="Dave", is_expert=True)
    job_on(upload_ready(dave, classification_csv()))  # a stranger's jobs are not alice's

    later_version = evaluate_without_training(later)  # runs first, still counts `earlier`
    earlier_version = evaluate_without_training(earlier)

    assert later_version.evaluation["sealed_evaluations"]["before_this_one"] == 1
    assert earlier_version.evaluation["sealed_evaluations"]["before_this_one"] == 0


def test_the_listing_page_and_api_show_the_attempts_and_the_corrected_interval(
    alice, carol, api, upload_ready, evaluate_without_training
):
    from listings import services as listing_services

    original = upload_ready(alice, classification_csv())
    variant = upload_ready(alice, padded_variants(original)["extra rows"][1])
    jobs = [job_on(original), job_on(variant), job_on(variant)]
    versions = [evaluate_without_training(job) for job in jobs]
    listing = listing_services.listing_create(
        owner=alice, model_version_id=versions[2].pk, title="Clinic triage",
        summary="Routes notes.", domain="healthcare",
    )  # fmt: skip
    listing_services.listing_submit(owner=alice, listing_id=listing.pk)
    listing = listing_services.listing_approve(moderator=carol, listing_id=listing.pk)
    lift = read_evaluation(versions[2].evaluation).strongest_baseline.lift

    public = api().get(f"/api/v1/listings/{listing.slug}").json()
    page = Client().get(f"/catalogue/{listing.slug}/").content.decode()

    label = "95% interval, Bonferroni-corrected for 3 sealed evaluations on this data"
    assert public["evaluation_attempts"] == {
        "sealed_evaluations_before": 2,
        "interval_label": label,
    }
    assert public["evaluation"]["prior_sealed_evaluations"] == 2
    assert public["lift_over_strongest_baseline"]["ci_low"] == lift.ci_low
    assert public["lift_over_strongest_baseline"]["ci_high"] == lift.ci_high
    assert "2 sealed evaluations on this data before this one" in page
    assert f"{label} [{lift.ci_low:.3f}, {lift.ci_high:.3f}]" in page


def test_moderators_see_the_attempt_history_of_the_data_family(
    alice, carol, upload_ready, evaluate_without_training
):
    from listings import services as listing_services

    original = upload_ready(alice, classification_csv())
    variant = upload_ready(alice, padded_variants(original)["reordered"][1])
    versions = [evaluate_without_training(job_on(d)) for d in (original, variant)]
    listing = listing_services.listing_create(
        owner=alice, model_version_id=versions[1].pk, title="Clinic triage",
        summary="Routes notes.", domain="healthcare",
    )  # fmt: skip
    listing_services.listing_submit(owner=alice, listing_id=listing.pk)
    console = Client()
    console.force_login(carol)

    listing_page = console.get(f"/admin/listings/listing/{listing.pk}/change/")
    family_page = console.get(f"/admin/training_worker/datafamily/{original.family_id}/change/")

    assert listing_page.status_code == 200 and family_page.status_code == 200
    listing_html, family_html = listing_page.content.decode(), family_page.content.decode()
    assert "Attempts on this data family" in listing_html
    assert "1 sealed evaluation(s) on this data before this one; 2 on the family" in listing_html
    assert f"/admin/training_worker/datafamily/{original.family_id}/change/" in listing_html
    assert "2 sealed evaluation(s) on this data family" in family_html
    for version in versions:
        assert version.name in family_html
    assert original.name in family_html and variant.name in family_html
    assert bytes(original.family.sealed_keys).hex()[:16] not in family_html
