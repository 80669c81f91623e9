"""An oversized body is refused from its headers: nothing parses it, nothing spools it.

Each test talks HTTP to a real server (pytest-django's live server) over a raw
socket, sends a body larger than the limit, and checks that no upload handler saw a
byte of it, the upload temp folder stayed empty and no dataset was stored. Under ASGI,
where Django reads the whole body before any middleware, the project's ASGI
application is called directly and must answer without receiving the body.
"""

import asyncio
import contextlib
import http.client
import json
import socket
import threading
from urllib.parse import urlparse

import pytest
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.test import Client

from accounts.services import api_key_create
from training_worker.models import Dataset

LIMIT = 256 * 1024
SPOOL_THRESHOLD = 16 * 1024
files_seen_by_upload_handlers: list[str] = []


class RecordingUploadHandler(TemporaryFileUploadHandler):
    """The default spooling handler, noting every file Django starts to receive."""

    def new_file(self, field_name, file_name, *args, **kwargs):
        files_seen_by_upload_handlers.append(file_name)
        return super().new_file(field_name, file_name, *args, **kwargs)


@pytest.fixture
def spool_dir(settings, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    files_seen_by_upload_handlers.clear()
    settings.DATASET_MAX_UPLOAD_BYTES = LIMIT
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = SPOOL_THRESHOLD  # any parsed file hits the disk
    settings.FILE_UPLOAD_TEMP_DIR = str(spool)
    settings.FILE_UPLOAD_HANDLERS = [f"{__name__}.RecordingUploadHandler"]
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return spool


def multipart(file_bytes: int) -> tuple[str, bytes]:
    boundary = "niche-test-boundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="notes.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
        "text,label\r\n"
    ).encode()
    rows = b"a long clinical note,urgent\r\n" * (file_bytes // 29 + 1)
    body = head + rows[:file_bytes] + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def raw_request(
    live_server, method: str, path: str, headers: dict, body: bytes, *, chunked=False
) -> http.client.HTTPResponse:
    """Send the whole body from a thread while reading the answer, as a real client does."""
    url = urlparse(live_server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {url.hostname}:{url.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send_body():
        with contextlib.suppress(OSError):  # the server answered and closed: the point
            sock.sendall(payload)

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.body = response.read()
    sock.close()
    sender.join(timeout=30)
    return response


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def assert_nothing_parsed_or_stored(spool_dir, alice):
    assert files_seen_by_upload_handlers == []
    assert list(spool_dir.iterdir()) == []
    assert not Dataset.objects.filter(owner=alice).exists()


def test_portal_upload_over_the_limit_is_refused_before_csrf_parses_it(
    live_server, spool_dir, alice
):
    content_type, body = multipart(4 * LIMIT)

    response = raw_request(
        live_server,
        "POST",
        "/studio/datasets/",
        {"Cookie": session_cookie(alice), "Content-Type": content_type},
        body,
    )

    assert response.status == 413
    assert response.getheader("Content-Type").startswith("text/html")
    assert b"the limit is 262,144 bytes" in response.body
    assert_nothing_parsed_or_stored(spool_dir, alice)


def test_api_upload_over_the_limit_is_413_in_the_error_contract_and_never_spooled(
    live_server, spool_dir, alice
):
    _, plaintext = api_key_create(user=alice, name="ci", scopes=["train"])
    content_type, body = multipart(4 * LIMIT)

    response = raw_request(
        live_server,
        "POST",
        "/api/v1/datasets",
        {"Authorization": f"Bearer {plaintext}", "Content-Type": content_type},
        body,
    )

    assert response.status == 413
    assert b'"code": "file_too_large"' in response.body.replace(b'":"', b'": "')
    assert_nothing_parsed_or_stored(spool_dir, alice)


def test_mallory_cannot_push_a_huge_form_to_a_page_that_takes_no_upload(
    live_server, spool_dir, alice, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT
    content_type, body = multipart(4 * LIMIT)

    response = raw_request(live_server, "POST", "/login/", {"Content-Type": content_type}, body)

    assert response.status == 413
    assert files_seen_by_upload_handlers == []
    assert list(spool_dir.iterdir()) == []


def test_a_chunked_upload_without_length_is_411(live_server, spool_dir, alice):
    _, plaintext = api_key_create(user=alice, name="ci", scopes=["train"])
    content_type, body = multipart(4 * LIMIT)

    response = raw_request(
        live_server,
        "POST",
        "/api/v1/datasets",
        {"Authorization": f"Bearer {plaintext}", "Content-Type": content_type},
        body,
        chunked=True,
    )

    assert response.status == 411
    assert b"length_required" in response.body
    assert_nothing_parsed_or_stored(spool_dir, alice)


def test_an_upload_under_the_limit_still_arrives(live_server, spool_dir, alice):
    _, plaintext = api_key_create(user=alice, name="ci", scopes=["train"])
    content_type, body = multipart(LIMIT // 2)

    response = raw_request(
        live_server,
        "POST",
        "/api/v1/datasets",
        {"Authorization": f"Bearer {plaintext}", "Content-Type": content_type},
        body,
    )

    assert response.status == 202, response.body
    assert files_seen_by_upload_handlers == ["notes.csv"]
    assert Dataset.objects.filter(owner=alice).count() == 1


def call_asgi(method: str, path: str, headers: dict) -> tuple[dict, bytes, list]:
    """One request through the project's ASGI application; records every body read."""
    from marketplace.asgi import application

    reads, sent = [], []

    async def receive():
        if reads:  # Django listens for a disconnect once it has the body: never comes
            await asyncio.Event().wait()
        reads.append("body")
        return {"type": "http.request", "body": b"x" * 1024, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(application(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start, body, reads


def test_under_asgi_an_oversized_upload_is_refused_before_the_body_is_received(settings):
    settings.DATASET_MAX_UPLOAD_BYTES = LIMIT

    start, body, reads = call_asgi(
        "POST",
        "/api/v1/datasets",
        {"Content-Length": str(4 * LIMIT), "Content-Type": "multipart/form-data; boundary=x"},
    )

    assert start["status"] == 413
    assert json.loads(body)["error"]["code"] == "file_too_large"
    assert reads == []


def test_under_asgi_a_chunked_portal_upload_is_411_unread(settings):
    start, body, reads = call_asgi("POST", "/studio/datasets/", {"Transfer-Encoding": "chunked"})

    assert start["status"] == 411
    assert b"Content-Length" in body
    assert reads == []


def test_under_asgi_a_small_body_reaches_django(settings):
    start, body, reads = call_asgi("POST", "/api/v1/me", {"Content-Length": "1024"})

    assert start["status"] == 401
    assert json.loads(body)["error"]["code"] == "not_authenticated"
    assert reads == ["body"]
