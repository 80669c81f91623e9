"""Private evaluations: bob scores alice's listings on his own rows before he buys.

The scoring task runs inline (the test settings run Celery eagerly) on the engine an
inference worker builds (serving.engine.service.engine_get), against real LoRA adapters
in storage, Postgres and Redis. alice sells two ticket classifiers; bob evaluates them;
carol moderates; mallory is nobody's friend.
"""

import io
import json
import logging
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from billing.models import OfferKind, UsageRecord
from evidence.models import CandidateCharge, EvaluationStatus, PrivateEvaluation
from evidence.services import private_evaluations_sweep
from serving.protocol import TEXT_GENERATION
from tests.billing.conftest import make_active_licence, make_offer
from tests.integration.specialists import LABELS, publish_specialist

pytestmark = pytest.mark.django_db

MARKER = "zq-private-row-marker"


@pytest.fixture
def triage(alice, carol, tmp_path):
    return publish_specialist(alice, carol, folder=tmp_path, title="Ticket triage")


@pytest.fixture
def triage_two(alice, carol, tmp_path):
    return publish_specialist(alice, carol, folder=tmp_path, title="Ticket triage two")


def rows_file(count: int = 30, *, labels=LABELS, marker: str = MARKER) -> io.BytesIO:
    lines = [
        {
            "text": f"{marker} ticket {i} about {labels[i % len(labels)]}",
            "label": labels[i % len(labels)],
        }
        for i in range(count)
    ]
    handle = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    handle.name = "my-rows.jsonl"
    return handle


def evaluate(client, listings, *, file=None, **fields):
    body = {"file": file or rows_file(), "listings": ",".join(listings)} | fields
    return client.post("/api/v1/evaluations", body, format="multipart")


def stored_rows() -> list[str]:
    """Every rows file of a private evaluation still in storage."""
    root = "sealed/private-evaluations"
    try:
        folders, _ = default_storage.listdir(root)
    except FileNotFoundError:
        return []
    return [
        f"{root}/{folder}/{name}"
        for folder in folders
        for name in default_storage.listdir(f"{root}/{folder}")[1]
    ]


def test_bob_scores_two_listings_on_his_rows_and_reads_a_comparison(
    api, bob, triage, triage_two, django_capture_on_commit_callbacks
):
    bob_api = api(bob, scopes=("infer",))
    with django_capture_on_commit_callbacks(execute=True):
        response = evaluate(bob_api, [triage.slug, triage_two.slug])
    assert response.status_code == 202, response.content
    evaluation_id = response.json()["id"]

    body = bob_api.get(f"/api/v1/evaluations/{evaluation_id}").json()
    assert body["status"] == "succeeded", body
    assert body["progress"]["done"] == body["progress"]["total"] > 0
    result = body["result"]
    keys = [c["key"] for c in result["contenders"]]
    assert keys == [f"listing:{triage.slug}", f"listing:{triage_two.slug}", "generalist", "classic"]
    for contender in result["contenders"]:
        assert 0.0 <= contender["ci_low"] <= contender["value"] <= contender["ci_high"] <= 1.0
        assert set(contender["per_class"]) == set(LABELS)
        assert contender["rows_scored"] == 30
    # every pair, with the paired bootstrap's interval
    assert len(result["pairs"]) == 6
    assert {"few_rows"} <= {w["code"] for w in result["warnings"]}
    assert result["metric"]["name"] == "accuracy"
    # the rows are gone once scored, and the evaluation says so
    assert body["rows_deleted"] is True
    assert not [name for name in stored_rows() if evaluation_id in name]
    assert PrivateEvaluation.objects.get(pk=evaluation_id).rows_path == ""
    # free: nothing was billed
    assert not UsageRecord.objects.filter(idempotency_key__startswith="peval:").exists()
    # and the list shows it
    listed = bob_api.get("/api/v1/evaluations").json()["data"]
    assert [item["id"] for item in listed] == [evaluation_id]


def test_the_expert_sees_only_a_count(
    api, alice, bob, mallory, triage, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        evaluation_id = evaluate(api(bob), [triage.slug]).json()["id"]
    for outsider in (alice, mallory):
        assert api(outsider).get(f"/api/v1/evaluations/{evaluation_id}").status_code == 404
        assert api(outsider).get("/api/v1/evaluations").json()["data"] == []
        assert api(outsider).delete(f"/api/v1/evaluations/{evaluation_id}").status_code == 404
    counts = api(alice).get(f"/api/v1/listings/{triage.slug}/private-evaluations")
    assert counts.status_code == 200
    month = timezone.now().strftime("%Y-%m")
    assert counts.json() == {
        "listing": triage.slug,
        "free": True,
        "data": [{"month": month, "evaluations": 1}],
    }
    assert MARKER not in counts.content.decode()
    # a stranger cannot read another expert's counts
    assert (
        api(mallory).get(f"/api/v1/listings/{triage.slug}/private-evaluations").status_code == 404
    )


def test_rows_never_reach_the_logs(api, bob, triage, django_capture_on_commit_callbacks, caplog):
    caplog.set_level(logging.DEBUG)
    with django_capture_on_commit_callbacks(execute=True):
        response = evaluate(api(bob), [triage.slug])
    assert response.status_code == 202
    assert MARKER not in caplog.text


def test_kept_rows_rerun_then_delete(api, bob, triage, django_capture_on_commit_callbacks):
    bob_api = api(bob)
    with django_capture_on_commit_callbacks(execute=True):
        first = evaluate(bob_api, [triage.slug], keep_rows="true").json()
    evaluation = PrivateEvaluation.objects.get(pk=first["id"])
    assert evaluation.status == EvaluationStatus.SUCCEEDED
    assert evaluation.rows_path and default_storage.exists(evaluation.rows_path)
    assert evaluation.rows_expire_at > timezone.now() + timedelta(days=29)

    with django_capture_on_commit_callbacks(execute=True):
        again = bob_api.post(f"/api/v1/evaluations/{evaluation.pk}/rerun")
    assert again.status_code == 202, again.content
    rerun = PrivateEvaluation.objects.get(pk=again.json()["id"])
    assert rerun.status == EvaluationStatus.SUCCEEDED and rerun.rerun_of_id == evaluation.pk

    assert bob_api.delete(f"/api/v1/evaluations/{evaluation.pk}/rows").status_code == 204
    evaluation.refresh_from_db()
    assert evaluation.rows_path == "" and evaluation.result is not None
    assert bob_api.post(f"/api/v1/evaluations/{evaluation.pk}/rerun").json()["error"]["code"] == (
        "evaluation_not_rerunnable"
    )
    name = rerun.rows_path
    with django_capture_on_commit_callbacks(execute=True):  # the file goes once it commits
        assert bob_api.delete(f"/api/v1/evaluations/{rerun.pk}").status_code == 204
    assert not PrivateEvaluation.objects.filter(pk=rerun.pk).exists()
    assert not default_storage.exists(name)


def test_kept_rows_go_after_thirty_days(api, bob, triage, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = evaluate(api(bob), [triage.slug], keep_rows="true").json()
    evaluation = PrivateEvaluation.objects.get(pk=first["id"])
    name = evaluation.rows_path
    assert private_evaluations_sweep()["rows_deleted"] == 0
    counts = private_evaluations_sweep(now=timezone.now() + timedelta(days=31))
    assert counts["rows_deleted"] == 1
    evaluation.refresh_from_db()
    assert evaluation.rows_path == "" and evaluation.rows_deleted_at is not None
    assert not default_storage.exists(name)


@pytest.mark.parametrize(
    ("listings", "code"),
    [
        ([], "validation_error"),
        (["a", "b", "c", "d", "e", "f"], "invalid_evaluation"),
        (["TRIAGE", "TRIAGE"], "invalid_evaluation"),
        (["no-such-listing"], "invalid_evaluation"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_written(api, bob, triage, listings, code):
    before = stored_rows()
    listings = [triage.slug if slug == "TRIAGE" else slug for slug in listings]
    response = (
        evaluate(api(bob), listings)
        if listings
        else api(bob).post("/api/v1/evaluations", {"file": rows_file()}, format="multipart")
    )
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == code
    assert not PrivateEvaluation.objects.exists()
    assert stored_rows() == before


def test_labels_the_model_cannot_answer_need_a_map(
    api, bob, triage, django_capture_on_commit_callbacks
):
    before = stored_rows()
    other = rows_file(labels=["invoice", "bug", "praise"])
    response = evaluate(api(bob), [triage.slug], file=other)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "labels_not_covered"
    assert "invoice" in response.json()["error"]["message"]
    assert not PrivateEvaluation.objects.exists() and stored_rows() == before

    label_map = json.dumps({triage.slug: {"billing": "invoice"}})
    with django_capture_on_commit_callbacks(execute=True):
        mapped = evaluate(
            api(bob),
            [triage.slug],
            file=rows_file(labels=["invoice", "bug", "praise"]),
            label_map=label_map,
        )
    assert mapped.status_code == 202, mapped.content
    assert mapped.json()["candidates"][0]["label_map"] == {"billing": "invoice"}
    assert PrivateEvaluation.objects.get().status == EvaluationStatus.SUCCEEDED


def test_rows_of_another_task_are_refused(api, bob, triage):
    handle = io.BytesIO(b'{"prompt": "a", "completion": "b"}\n' * 20)
    handle.name = "gen.jsonl"
    response = evaluate(api(bob), [triage.slug], file=handle)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "evaluation_rows_invalid"


def test_listings_of_two_tasks_are_refused(
    api, bob, alice, carol, triage, tmp_path, tiny_causal_built
):
    writer = publish_specialist(alice, carol, task=TEXT_GENERATION, folder=tmp_path, title="Writer")
    response = evaluate(api(bob), [triage.slug, writer.slug])
    assert response.status_code == 422
    assert "different tasks" in response.json()["error"]["message"]


def test_past_the_free_allowance_rows_are_calls_on_the_licence(
    api, bob, triage, settings, django_capture_on_commit_callbacks
):
    settings.PRIVATE_EVALUATION_FREE_ROWS_PER_DAY = 40
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate(api(bob), [triage.slug]).status_code == 202  # 30 of 40 free rows
    refused = evaluate(api(bob), [triage.slug])
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "evaluation_needs_licence"
    assert "allowance" in refused.json()["error"]["message"]
    assert PrivateEvaluation.objects.count() == 1

    licence = make_active_licence(bob, make_offer(triage, OfferKind.PER_CALL, unit_amount=200))
    with django_capture_on_commit_callbacks(execute=True):
        paid = evaluate(api(bob), [triage.slug])
    assert paid.status_code == 202, paid.content
    assert paid.json()["candidates"][0]["charge"] == CandidateCharge.PER_CALL
    record = UsageRecord.objects.get(idempotency_key=f"peval:{paid.json()['id']}:{triage.slug}")
    assert record.licence_id == licence.id and record.units == 30


def test_an_expert_may_turn_off_free_evaluation_but_not_the_paid_kind(
    api, alice, bob, triage, django_capture_on_commit_callbacks
):
    path = f"/api/v1/listings/{triage.slug}/private-evaluations"
    assert api(bob).post(path, {"free": False}, format="json").status_code == 404
    turned = api(alice).post(path, {"free": False}, format="json")
    assert turned.status_code == 200 and turned.json()["free"] is False
    refused = evaluate(api(bob), [triage.slug])
    assert refused.status_code == 403
    assert "does not offer free private evaluation" in refused.json()["error"]["message"]

    make_active_licence(bob, make_offer(triage, OfferKind.FREE_TRIAL, included_calls=100))
    with django_capture_on_commit_callbacks(execute=True):
        paid = evaluate(api(bob), [triage.slug])
    assert paid.status_code == 202
    assert UsageRecord.objects.filter(idempotency_key__startswith="peval:").get().units == 30
    # the trial has 100 calls: 30 used, so 80 more rows do not fit
    too_many = evaluate(api(bob), [triage.slug], file=rows_file(80))
    assert too_many.status_code == 429, too_many.content


def test_a_generation_listing_is_scored_with_the_graded_metric(
    api, bob, alice, carol, tmp_path, tiny_causal_built, django_capture_on_commit_callbacks
):
    writer = publish_specialist(alice, carol, task=TEXT_GENERATION, folder=tmp_path, title="Writer")
    lines = [{"prompt": f"{MARKER} verb {i}", "completion": f"did{i}"} for i in range(12)]
    handle = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    handle.name = "verbs.jsonl"
    with django_capture_on_commit_callbacks(execute=True):
        response = evaluate(api(bob), [writer.slug], file=handle)
    assert response.status_code == 202, response.content
    result = api(bob).get(f"/api/v1/evaluations/{response.json()['id']}").json()["result"]
    assert result["metric"]["name"] == "character_error_rate"
    assert result["metric"]["higher_is_better"] is False
    assert [c["key"] for c in result["contenders"]] == [
        f"listing:{writer.slug}",
        "generalist",
        "classic",
    ]
    for contender in result["contenders"]:
        assert contender["ci_low"] <= contender["value"] <= contender["ci_high"]
        assert 0.0 <= contender["exact_match"] <= 1.0


def test_rows_of_one_label_may_be_scored(api, bob, triage, django_capture_on_commit_callbacks):
    """Training rules (two labels, two rows a label) do not bind rows that are only scored."""
    with django_capture_on_commit_callbacks(execute=True):
        response = evaluate(api(bob), [triage.slug], file=rows_file(12, labels=["bug"]))
    assert response.status_code == 202, response.content
    assert PrivateEvaluation.objects.get().status == EvaluationStatus.SUCCEEDED
