"""The Files and Batch API before any worker: uploads checked line by line, batches
created, listed, read and cancelled by their owner only, in OpenAI's shapes.

Nothing here reaches an engine: the batch task is sent after commit, and these tests
never commit. Rows running for real: test_batch_runs.py (in this process's engine) and
test_batch_on_workers.py (the openai client against a live server and a worker).
"""

import gzip
import json
import pickle

import pytest
from django.core.files.storage import default_storage
from django.test import override_settings
from django.urls import resolve

from serving import batch_apis
from serving.models import Batch, BatchFile, BatchStatus
from tests.serving.batches.conftest import (
    chat_line,
    create_batch,
    jsonl,
    predict_line,
    upload,
)
from tests.serving.gateway.conftest import key_for


def test_the_batch_routes_live_under_v1():
    assert resolve("/v1/files").func.view_class is batch_apis.FileListCreateApi
    assert resolve("/v1/files/file-abc/content").func.view_class is batch_apis.FileContentApi
    assert resolve("/v1/batches").func.view_class is batch_apis.BatchListCreateApi
    assert resolve("/v1/batches/batch_abc").func.view_class is batch_apis.BatchDetailApi
    assert resolve("/v1/batches/batch_abc/cancel").func.view_class is batch_apis.BatchCancelApi


def test_bob_uploads_a_batch_file_and_it_is_stored_under_a_name_of_ours(api, bob, bob_key, triage):
    rows = [predict_line(f"r{n}", triage.slug, [f"ticket {n}"]) for n in range(3)]

    response = upload(api(), bob_key, jsonl(rows), name="../../etc/passwd.jsonl")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "file"
    assert body["purpose"] == "batch"
    assert body["status"] == "processed"
    assert body["filename"] == "passwd.jsonl"  # only displayed
    assert body["bytes"] == len(jsonl(rows))
    assert body["id"].startswith("file-")
    stored = BatchFile.objects.get(pk=body["id"])
    assert stored.owner == bob
    assert stored.request_count == 3
    assert stored.endpoints == ["/api/v1/models/{listing}/predict"]
    assert stored.storage_path == f"batches/{stored.id}/input.jsonl"
    with default_storage.open(stored.storage_path, "rb") as handle:
        assert handle.read() == jsonl(rows)


def test_a_file_with_bad_lines_is_refused_naming_each_line_in_the_openai_shape(api, bob_key):
    content = b"\n".join(
        [
            json.dumps(chat_line("a", "m")).encode(),
            b"{not json",
            json.dumps(chat_line("a", "m")).encode(),  # custom_id again
            json.dumps(chat_line("c", "m") | {"method": "GET"}).encode(),
            json.dumps(chat_line("d", "m") | {"url": "/v1/embeddings"}).encode(),
            b"",  # a blank line is skipped, and still counted
            json.dumps(chat_line("e", "m") | {"body": "text"}).encode(),
            b"\xff\xfe\x00",
            b"[1, 2]",
        ]
    )

    response = upload(api(), bob_key, content)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_batch_file"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("7 lines of the file are not a batch request")
    assert set(error["fields"]) == {
        "line 2", "line 3", "line 4", "line 5", "line 7", "line 8", "line 9",
    }  # fmt: skip
    assert "used twice" in error["fields"]["line 3"][0]
    assert error["fields"]["line 8"] == ["Not UTF-8 text."]
    assert BatchFile.objects.count() == 0


@pytest.mark.parametrize(
    "content",
    [
        gzip.compress(jsonl([chat_line("a", "m")])),  # compressed: never unpacked
        pickle.dumps({"custom_id": "a"}, protocol=4),  # a pickle is bytes, never loaded
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than any parser's stack
        b'{"custom_id": "' + b"x" * (8 * 1024 * 1024) + b'"}',  # one 8 MiB line, no newline
        b"\x00" * 4096,
    ],
    ids=["gzip", "pickle", "nesting-bomb", "one-long-line", "nul-bytes"],
)
def test_hostile_batch_files_are_refused_and_nothing_is_stored(api, bob_key, content):
    before = stored_batch_folders()

    response = upload(api(), bob_key, content, name="requests.jsonl")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_batch_file"
    assert BatchFile.objects.count() == 0
    assert stored_batch_folders() == before


def stored_batch_folders() -> set[str]:
    """Stored files live in batches/<file id>/."""
    return (
        set(default_storage.listdir("batches")[0]) if default_storage.exists("batches") else set()
    )


def test_uploads_that_are_empty_for_another_purpose_or_too_large_are_refused(api, bob_key):
    empty = upload(api(), bob_key, b"\n\n")
    assert (empty.status_code, empty.json()["error"]["code"]) == (422, "invalid_batch_file")

    fine_tune = upload(api(), bob_key, jsonl([chat_line("a", "m")]), purpose="fine-tune")
    assert fine_tune.status_code == 422
    assert fine_tune.json()["error"]["param"] == "purpose"

    with override_settings(BATCH_MAX_UPLOAD_BYTES=1000):
        too_large = upload(api(), bob_key, jsonl([chat_line(f"r{n}", "m") for n in range(40)]))
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] in ("file_too_large", "payload_too_large")

    with override_settings(BATCH_MAX_REQUESTS=2):
        too_many = upload(api(), bob_key, jsonl([chat_line(f"r{n}", "m") for n in range(3)]))
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (422, "too_many_requests")
    assert BatchFile.objects.count() == 0


def test_a_key_without_the_infer_scope_is_refused(api, bob):
    read_only = key_for(bob, scopes=("read",))
    assert upload(api(), read_only, jsonl([chat_line("a", "m")])).status_code == 403
    response = api().get("/v1/batches", HTTP_AUTHORIZATION=f"Bearer {read_only}")
    assert response.status_code == 403
    assert api().get("/v1/batches").status_code == 401


def test_bob_creates_a_batch_in_openai_shape_and_it_waits_for_a_worker(
    api, bob, bob_key, triage, django_capture_on_commit_callbacks
):
    file_id = upload(api(), bob_key, jsonl([chat_line("a", triage.slug)])).json()["id"]

    with django_capture_on_commit_callbacks(execute=False) as sent:
        response = create_batch(
            api(), bob_key, file_id, "/v1/chat/completions", metadata={"job": "nightly"}
        )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "batch"
    assert body["id"].startswith("batch_")
    assert body["status"] == "validating"
    assert body["input_file_id"] == file_id
    assert body["endpoint"] == "/v1/chat/completions"
    assert body["request_counts"] == {"total": 1, "completed": 0, "failed": 0}
    assert body["metadata"] == {"job": "nightly"}
    assert body["expires_at"] - body["created_at"] == 24 * 3600
    assert body["output_file_id"] is None and body["errors"] is None
    assert len(sent) == 1  # the batch task, once the batch is committed
    batch = Batch.objects.get(pk=body["id"])
    assert (batch.owner, batch.request_total, batch.api_key.user) == (bob, 1, bob)


def test_a_batch_must_name_the_endpoint_every_line_calls_and_a_24h_window(api, bob_key, triage):
    file_id = upload(api(), bob_key, jsonl([chat_line("a", triage.slug)])).json()["id"]

    wrong = create_batch(api(), bob_key, file_id, "/v1/completions")
    assert wrong.status_code == 422
    assert wrong.json()["error"]["param"] == "endpoint"
    unknown = create_batch(api(), bob_key, file_id, "/v1/embeddings")
    assert unknown.status_code == 422
    window = create_batch(api(), bob_key, file_id, "/v1/chat/completions", completion_window="1h")
    assert (window.status_code, window.json()["error"]["param"]) == (422, "completion_window")
    metadata = create_batch(api(), bob_key, file_id, "/v1/chat/completions", metadata={"n": 1})
    assert (metadata.status_code, metadata.json()["error"]["param"]) == (422, "metadata")
    missing = create_batch(api(), bob_key, "file-nothing", "/v1/chat/completions")
    assert missing.status_code == 404
    assert Batch.objects.count() == 0


def test_only_the_owner_sees_a_file_or_batch_others_get_404(api, bob, bob_key, mallory, triage):
    file_id = upload(api(), bob_key, jsonl([chat_line("a", triage.slug)])).json()["id"]
    batch_id = create_batch(api(), bob_key, file_id, "/v1/chat/completions").json()["id"]
    mallory_key = key_for(mallory, scopes=("infer",))
    auth = {"HTTP_AUTHORIZATION": f"Bearer {mallory_key}"}

    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content", f"/v1/batches/{batch_id}"):
        response = api().get(path, **auth)
        assert response.status_code == 404, path
        assert bob.email not in response.content.decode()
    assert api().post(f"/v1/batches/{batch_id}/cancel", **auth).status_code == 404
    assert create_batch(api(), mallory_key, file_id, "/v1/chat/completions").status_code == 404
    assert api().get("/v1/batches", **auth).json()["data"] == []
    assert api().get("/v1/files", **auth).json()["data"] == []
    assert Batch.objects.get(pk=batch_id).status == BatchStatus.VALIDATING


def test_bob_reads_his_file_back_and_lists_his_batches_page_by_page(api, bob_key, triage):
    content = jsonl([chat_line("a", triage.slug)])
    file_id = upload(api(), bob_key, content).json()["id"]
    ids = [
        create_batch(api(), bob_key, file_id, "/v1/chat/completions").json()["id"] for _ in range(3)
    ]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {bob_key}"}

    raw = api().get(f"/v1/files/{file_id}/content", HTTP_ACCEPT="application/binary", **auth)
    assert raw.status_code == 200
    assert raw["Content-Type"] == "application/jsonl"
    assert b"".join(raw.streaming_content) == content
    first = api().get("/v1/batches?limit=2", **auth).json()
    assert first["object"] == "list"
    assert [b["id"] for b in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    rest = api().get(f"/v1/batches?limit=2&after={first['last_id']}", **auth).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False
    files = api().get("/v1/files?purpose=batch", **auth).json()
    assert [f["id"] for f in files["data"]] == [file_id]


def test_cancelling_a_batch_no_worker_took_ends_it_at_once_and_twice_is_409(api, bob_key, triage):
    file_id = upload(api(), bob_key, jsonl([chat_line("a", triage.slug)])).json()["id"]
    batch_id = create_batch(api(), bob_key, file_id, "/v1/chat/completions").json()["id"]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {bob_key}"}

    response = api().post(f"/v1/batches/{batch_id}/cancel", **auth)

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["cancelled_at"] is not None
    again = api().post(f"/v1/batches/{batch_id}/cancel", **auth)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "batch_not_cancellable")
    assert Batch.objects.get(pk=batch_id).status == BatchStatus.CANCELLED


def test_cancelling_a_running_batch_turns_it_cancelling_for_its_worker(
    api, bob_key, triage, django_capture_on_commit_callbacks
):
    file_id = upload(api(), bob_key, jsonl([chat_line("a", triage.slug)])).json()["id"]
    batch_id = create_batch(api(), bob_key, file_id, "/v1/chat/completions").json()["id"]
    Batch.objects.filter(pk=batch_id).update(status=BatchStatus.IN_PROGRESS, lease_owner="w1")

    with django_capture_on_commit_callbacks(execute=False) as sent:
        response = api().post(
            f"/v1/batches/{batch_id}/cancel", HTTP_AUTHORIZATION=f"Bearer {bob_key}"
        )

    assert response.json()["status"] == "cancelling"
    assert len(sent) == 1  # its task is sent, so it is finalized even between slices
    again = api().post(f"/v1/batches/{batch_id}/cancel", HTTP_AUTHORIZATION=f"Bearer {bob_key}")
    assert (again.status_code, again.json()["status"]) == (200, "cancelling")
