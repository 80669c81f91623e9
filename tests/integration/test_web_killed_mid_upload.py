"""The web tier SIGKILLed while a large dataset upload streams in: the client's request
ends (no hang), no dataset row and no stored file exist, and no temporary file is left.

Under ASGI Django spools the request body, as it arrives, to an unlinked temporary file
(the kernel frees it with the process); the upload's own named spool (niche-upload-<pid>)
exists only while the complete body is parsed, and a web process that starts removes
those of dead processes."""

import contextlib
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from accounts.services import api_key_create
from tests.conftest import make_user
from tests.integration.web import Gunicorn
from training_worker.models import Dataset

pytestmark = [pytest.mark.integration]

TOTAL_BYTES = 20 * 1024 * 1024  # over FILE_UPLOAD_MAX_MEMORY_SIZE: spooled to disk
SENT_BEFORE_KILL = 8 * 1024 * 1024


def spooled(folder) -> list:
    return [p for p in folder.iterdir() if ".upload" in p.name]


def web_processes(master: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == master:
                children.append(int(stat.parent.name))
    return [master, *children]


def open_unlinked_bytes(pids: list[int], folder: Path) -> int:
    """Bytes in files under `folder` that these processes hold open after unlinking."""
    total = 0
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith(str(folder)) and target.endswith("(deleted)"):
                    total += fd.stat().st_size
    return total


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def test_a_web_process_killed_mid_upload_leaves_no_row_and_no_file(
    transactional_db, worker_env, tmp_path
):
    alice = make_user("alice@example.com", is_expert=True)
    _, key = api_key_create(user=alice, name="uploader", scopes=["read", "train"])
    temp, media = tmp_path / "tmp", tmp_path / "media"
    temp.mkdir()
    media.mkdir()
    env = worker_env | {
        "DJANGO_SETTINGS_MODULE": "tests.integration.crash_settings",
        "CRASH_MEDIA_ROOT": str(media),
        "TMPDIR": str(temp),  # where Django spools uploads (FILE_UPLOAD_TEMP_DIR unset)
    }
    web = Gunicorn(env, f"upload-{uuid.uuid4().hex[:6]}").wait_ready()
    try:
        # Given a 20 MB multipart upload, 8 MB of it sent and spooled to a temporary file
        boundary = "niche-boundary-7d1f"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.csv"\r\nContent-Type: text/csv\r\n\r\ntext,label\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        row = b"the parcel arrived late and damaged,shipping\r\n"
        length = TOTAL_BYTES
        client = socket.create_connection(("127.0.0.1", web.port), timeout=10)
        client.sendall(
            (
                f"POST /api/v1/datasets HTTP/1.1\r\nHost: 127.0.0.1:{web.port}\r\n"
                f"Authorization: Bearer {key}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ).encode()
            + head
        )
        sent = len(head)
        chunk = row * (256 * 1024 // len(row))
        while sent < SENT_BEFORE_KILL:
            client.sendall(chunk)
            sent += len(chunk)
        assert sent + len(tail) < length  # the body is far from complete
        pids = web_processes(web.process.pid)
        wait_for(lambda: open_unlinked_bytes(pids, temp) > 0, 30, "the body spooled to disk")
        # and an upload spool of a process that died earlier, mid-parse
        orphan = temp / "niche-upload-999999999-dead.upload"
        orphan.write_bytes(b"text,label\r\nhalf a row")

        # When the whole web tier is SIGKILLed
        web.kill()

        # Then the client's request ends at once: the connection closes, no answer
        started = time.monotonic()
        try:
            answer = client.recv(4096)
        except (ConnectionResetError, TimeoutError) as exc:
            answer = repr(exc).encode()
        assert b"HTTP/1.1 2" not in answer
        assert time.monotonic() - started < 10
        client.close()
        assert not Dataset.objects.exists()
        assert not [p for p in media.rglob("*") if p.is_file()]
        # the body left nothing (the server's own metrics folder is not the upload's)
        left = [p.name for p in temp.iterdir() if not p.name.startswith("niche-metrics-")]
        assert left == [orphan.name]

        # and the web tier, started again, removes the dead process's upload spool
        web.stop()
        web = Gunicorn(env, f"upload-{uuid.uuid4().hex[:6]}").wait_ready()
        wait_for(lambda: not spooled(temp), 30, "the orphan to be removed")
        assert not Dataset.objects.exists()
    finally:
        web.stop()
