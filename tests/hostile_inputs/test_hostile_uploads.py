"""Hostile dataset uploads: quotas, bombs and binaries, encodings, filenames.

Decisions (see training_worker/upload_checks.py and ml/dataset_validation.py):
- compressed uploads are not accepted at all: refused by their first bytes (422
  ``compressed_file``) whatever their name, so a zip or gzip bomb is never inflated;
- UTF-8 (with or without BOM) and UTF-16 with its BOM are accepted and decoded; anything
  else (Latin-1/cp1252 saved as UTF-8, invalid bytes mid-file, UTF-16/32 without BOM) ends
  ``invalid`` with an ``invalid_encoding`` error naming the line;
- stored names are ``datasets/<uuid>/source<ext>``, never the client's; the displayed
  filename and name lose path parts, control and bidi/format characters.

Count: ``pytest --collect-only -q tests/hostile_inputs/test_hostile_uploads.py``.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import re
import unicodedata
import zipfile
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.hostile_inputs.hostile_weights import seven_zip_of
from tests.training_worker.conftest import classification_csv
from training_worker import services
from training_worker.errors import DatasetNotUsable
from training_worker.models import Dataset

STORED_NAME = re.compile(r"^datasets/[0-9a-f-]{36}/source\.(csv|jsonl|json)$")


def upload(name: str, content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def stored_files() -> set[str]:
    if not default_storage.exists("datasets"):
        return set()
    folders = default_storage.listdir("datasets")[0]
    return {f"{d}/{f}" for d in folders for f in default_storage.listdir(f"datasets/{d}")[1]}


@pytest.fixture(autouse=True)
def private_media(settings, tmp_path):
    """This module's own storage folder: other suites running at once cannot change what
    ``stored_files`` sees."""
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def post(api, django_capture_on_commit_callbacks):
    """POST a file as a persona (validation runs on commit); returns the response."""

    def do(user, filename: str, content: bytes, **extra):
        with django_capture_on_commit_callbacks(execute=True):
            return api(user).post("/api/v1/datasets", {"file": upload(filename, content), **extra})

    return do


def assert_refused(response, status: int, code: str, before: set[str], rows_before: int):
    assert response.status_code == status, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "file" in error["fields"]
    assert Dataset.objects.count() == rows_before  # nothing half-written: no row...
    assert stored_files() == before  # ...and no file


# --- size, rows and storage quotas


def test_over_the_size_limit_is_413_and_nothing_is_stored(alice, post, settings):
    settings.DATASET_MAX_UPLOAD_BYTES = 2_000
    before = stored_files()
    response = post(alice, "big.csv", classification_csv())  # ~4 KB
    assert_refused(response, 413, "file_too_large", before, 0)


def test_storage_quota_is_per_user_and_freed_by_deleting(alice, bob, post, api, settings):
    content = classification_csv()
    settings.DATASET_STORAGE_QUOTA_BYTES = 2 * len(content) + 10
    first = post(alice, "one.csv", content)
    assert post(alice, "two.csv", content).status_code == 202
    before = stored_files()

    refused = post(alice, "three.csv", content)

    assert_refused(refused, 413, "storage_quota_exceeded", before, 2)
    assert "quota" in refused.json()["error"]["message"]
    assert post(bob, "bobs.csv", content).status_code == 202  # bob has his own quota
    assert api(alice).delete(f"/api/v1/datasets/{first.json()['id']}").status_code == 204
    assert post(alice, "three.csv", content).status_code == 202


def test_too_many_rows_ends_invalid_with_no_split_written(alice, post, settings):
    settings.DATASET_MAX_ROWS = 50
    response = post(alice, "rows.csv", classification_csv())  # 72 rows
    dataset = Dataset.objects.get(pk=response.json()["id"])
    assert dataset.status == "invalid"
    assert [e["code"] for e in dataset.report["errors"]] == ["too_many_rows"]
    assert dataset.train_path == dataset.sealed_path == ""


# --- compressed (bombs) and binary content


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data.csv", b"text,label\n" + b"0" * 20_000_000)
    return buffer.getvalue()


COMPRESSED = {
    "zip-bomb": zip_bomb,  # 20 MB inflates from ~20 KB
    "gzip-bomb": lambda: gzip.compress(b"text,label\n" + b"0" * 20_000_000),
    "7z": lambda: seven_zip_of("data.csv", classification_csv()),
    "bzip2": lambda: bz2.compress(classification_csv()),
    "xz": lambda: lzma.compress(classification_csv()),
    "zstd-magic": lambda: b"\x28\xb5\x2f\xfd" + bytes(64),
}


@pytest.mark.parametrize("build", COMPRESSED.values(), ids=COMPRESSED.keys())
def test_compressed_content_under_a_csv_name_is_refused_uninflated(alice, post, build):
    content = build()
    assert len(content) < 200_000
    before = stored_files()
    assert_refused(post(alice, "data.csv", content), 422, "compressed_file", before, 0)


@pytest.mark.parametrize("name", ["data.csv.gz", "data.zip", "data.7z", "data.tar.gz", "d.bz2"])
def test_compressed_extensions_are_refused(alice, post, name):
    before = stored_files()
    response = post(alice, name, gzip.compress(classification_csv()))
    assert_refused(response, 422, "unsupported_file_type", before, 0)


BINARY = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(32),
    "elf": b"\x7fELF\x02\x01\x01\x00" + bytes(64),
    "nul-mid-text": b"text,label\nhello,a\nwor\x00ld,b\n",
    "utf16-le-without-bom": "text,label\nhello,a\n".encode("utf-16-le"),
    "utf16-be-without-bom": "text,label\nhello,a\n".encode("utf-16-be"),
}


@pytest.mark.parametrize("content", BINARY.values(), ids=BINARY.keys())
def test_binary_content_is_refused(alice, post, content):
    before = stored_files()
    assert_refused(post(alice, "data.csv", content), 422, "binary_file", before, 0)


def test_a_gzip_content_encoded_body_is_not_inflated(alice, api):
    body = gzip.compress(b"text,label\n" + b"0" * 5_000_000)
    response = api(alice).generic(
        "POST",
        "/api/v1/datasets",
        body,
        content_type="multipart/form-data; boundary=x",
        HTTP_CONTENT_ENCODING="gzip",
    )
    assert 400 <= response.status_code < 500
    assert "error" in response.json()
    assert Dataset.objects.count() == 0


# --- encodings: accepted correctly, or a clear error naming the line


def rows_text() -> str:
    return classification_csv().decode()


def with_line_replaced(line_number: int, raw_line: bytes, content: bytes | None = None) -> bytes:
    lines = (content or classification_csv()).split(b"\n")
    lines[line_number - 1] = raw_line
    return b"\n".join(lines)


ACCEPTED_ENCODINGS = {
    "utf8": (classification_csv(), "utf-8"),
    "utf8-bom": (codecs.BOM_UTF8 + classification_csv(), "utf-8"),
    "utf16-le-bom": (codecs.BOM_UTF16_LE + rows_text().encode("utf-16-le"), "utf-16-le"),
    "utf16-be-bom": (codecs.BOM_UTF16_BE + rows_text().encode("utf-16-be"), "utf-16-be"),
    "utf8-non-ascii": (
        with_line_replaced(5, '"café naïve Straße 東京 😀 findings",cardiology'.encode()),
        "utf-8",
    ),
}


@pytest.mark.parametrize(("content", "encoding"), ACCEPTED_ENCODINGS.values(),
                         ids=ACCEPTED_ENCODINGS.keys())  # fmt: skip
def test_encoding_accepted_and_decoded(alice, post, content, encoding):
    dataset = Dataset.objects.get(pk=post(alice, "enc.csv", content).json()["id"])
    assert dataset.status == "ready", dataset.report["errors"]
    assert dataset.report["encoding"] == encoding
    assert dataset.report["columns"] == ["text", "label"]  # no BOM glued to "text"
    assert dataset.rows_usable == 72


REFUSED_ENCODINGS = {
    "latin1-as-utf8": (with_line_replaced(7, '"café findings",cardiology'.encode("latin-1")), 7),
    "cp1252-smart-quotes": (
        with_line_replaced(30, "\u201cquoted\u201d,dermatology".encode("cp1252")), 30
    ),
    "invalid-byte-mid-file": (with_line_replaced(40, b"bad \xff byte,orthopedics"), 40),
    "mixed-utf8-then-latin1": (
        with_line_replaced(61, b"\xe9t\xe9,orthopedics",
                           with_line_replaced(3, "ok é,cardiology".encode())),
        61,
    ),
    "overlong-slash": (with_line_replaced(12, b"over \xc0\xaf long,cardiology"), 12),
    "utf8-encoded-surrogate": (with_line_replaced(20, b"sur \xed\xa0\x80 rogate,cardiology"), 20),
    "truncated-multibyte-at-eof": (classification_csv().rstrip(b"\n") + b"\xe2\x82", 73),
    "utf32-with-bom": (codecs.BOM_UTF32_LE + "text,label\nhi,a\n".encode("utf-32-le"), 1),
}  # fmt: skip


@pytest.mark.parametrize(("content", "line"), REFUSED_ENCODINGS.values(),
                         ids=REFUSED_ENCODINGS.keys())  # fmt: skip
def test_encoding_refused_with_its_line(alice, post, content, line):
    dataset = Dataset.objects.get(pk=post(alice, "enc.csv", content).json()["id"])
    assert dataset.status == "invalid"
    (error,) = dataset.report["errors"]
    assert error["code"] == "invalid_encoding"
    assert error["line"] == line and f"line {line}" in error["message"].lower()
    assert dataset.train_path == dataset.sealed_path == ""


# --- filenames with path tricks


HOSTILE_NAMES = {
    "dot-dot": ("../../etc/passwd.csv", "passwd.csv"),
    "absolute": ("/etc/cron.d/job.csv", "job.csv"),
    "windows-dot-dot": ("..\\..\\windows\\win.csv", "win.csv"),
    "windows-absolute": ("C:\\Users\\bob\\x.csv", "x.csv"),
    "nul": ("data\x00.exe.csv", "data.exe.csv"),
    "crlf": ("name\r\nSet-Cookie: a=b.csv", "nameSet-Cookie: a=b.csv"),
    "rtl-override": ("report\u202egpj.csv", "reportgpj.csv"),
    "bidi-isolates": ("a\u2066b\u2069c.csv", "abc.csv"),
    "zero-width": ("\u200bzero\u200d.csv", "zero.csv"),
    "hidden-dotfile": (".hidden.csv", "hidden.csv"),
    "only-dots": ("....csv", "csv"),
    "html": ("<script>alert(1)</script>.csv", "script>.csv"),
    "very-long": ("x" * 1000 + ".csv", "x" * 251 + ".csv"),
    "nfd": ("cafe\u0301.csv", "caf\u00e9.csv"),
}


@pytest.mark.parametrize(("raw", "shown"), HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_hostile_filename_is_never_used_to_store_and_is_shown_sanitised(alice, raw, shown):
    if not shown.endswith(".csv"):
        with pytest.raises(DatasetNotUsable) as refused:
            services.dataset_upload(owner=alice, file=upload(raw, classification_csv()))
        assert refused.value.code == "unsupported_file_type"
        return
    dataset = services.dataset_upload(owner=alice, file=upload(raw, classification_csv()))
    assert STORED_NAME.match(dataset.source_path)
    stored = Path(default_storage.path(dataset.source_path)).resolve()
    assert stored.is_relative_to(Path(default_storage.location).resolve() / "datasets")
    assert dataset.filename == shown
    assert dataset.name == shown[:200]  # the name column holds 200 characters
    for text in (dataset.filename, dataset.name):
        assert not any(unicodedata.category(c).startswith("C") for c in text)
        assert "/" not in text and "\\" not in text and len(text) <= 255


def test_rtl_override_exe_is_refused_by_its_real_extension(alice):
    with pytest.raises(DatasetNotUsable) as refused:
        services.dataset_upload(owner=alice, file=upload("invoice\u202evsc.exe", b"a,b\n"))
    assert refused.value.code == "unsupported_file_type"
    assert Dataset.objects.count() == 0


def test_hostile_name_field_is_cleaned_and_escaped_in_the_portal(alice, post, client):
    response = post(alice, "ok.csv", classification_csv(), name="<b>x</b>\u202e\x07 notes")
    dataset = Dataset.objects.get(pk=response.json()["id"])
    assert dataset.name == "<b>x</b> notes"
    client.force_login(alice)
    page = client.get(f"/studio/datasets/{dataset.pk}/").content.decode()
    assert "&lt;b&gt;x&lt;/b&gt; notes" in page and "<b>x</b>" not in page


def test_multipart_filename_tricks_through_the_api(alice, post):
    response = post(alice, "..%2f..%2fx.csv", classification_csv())
    body = response.json()
    assert response.status_code == 202
    assert "/" not in body["filename"] and body["filename"].endswith(".csv")
    assert STORED_NAME.match(Dataset.objects.get(pk=body["id"]).source_path)


def test_parallel_uploads_cannot_squeeze_past_the_quota_together(transactional_db, alice, settings):
    """Eight uploads at once, room for three: the owner's row lock lets exactly three in."""
    import threading

    from celery._state import _set_task_join_will_block
    from django.db import connection

    from marketplace.errors import PayloadTooLargeError

    content = classification_csv()
    settings.DATASET_STORAGE_QUOTA_BYTES = 3 * len(content) + 10
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def one(n: int) -> None:
        try:
            barrier.wait()
            services.dataset_upload(owner=alice, file=upload(f"p{n}.csv", content))
            outcomes.append("stored")
        except PayloadTooLargeError as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        # Each upload runs its validation task eagerly here (test settings), and Celery's
        # eager apply() saves and restores a process-global "joining would block" flag:
        # eight threads at once can leave it set, and every later result.get() in this
        # pytest process would then refuse. Workers never run tasks eagerly.
        _set_task_join_will_block(False)
    assert sorted(outcomes) == ["storage_quota_exceeded"] * 5 + ["stored"] * 3
    assert Dataset.objects.filter(owner=alice).count() == 3
    folders = {name.split("/")[0] for name in stored_files()}
    assert len(folders) == 3  # the refused five left no file behind


# --- parser bombs: the validation reports them, never crashes (a crash left the dataset
# `validating` until the sweep gave up)

PARSER_BOMBS = {
    "json-nested-100k": ("deep.json", b"[" * 100_000 + b"]" * 100_000, "malformed_row"),
    "jsonl-nested-100k": (
        "deep.jsonl",
        b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "completion": "x"}\n',
        "malformed_row",
    ),
    "json-messages-nested": (
        "m.json",
        b'[{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]",
        "malformed_row",
    ),
    "csv-field-300kb": ("f.csv", b'text,label\n"' + b"x" * 300_000 + b'",a\n', "malformed_row"),
    "csv-unterminated-quote": ("q.csv", b'text,label\n"abc,a\n' + b"y,b\n" * 10, "malformed_row"),
    "csv-100k-columns": (  # was quadratic (columns.count per column): hung the worker
        "c.csv",
        b",".join(b"c%d" % i for i in range(100_000)) + b"\n" + b"1," * 99_999 + b"1\n",
        "too_many_columns",
    ),
}


@pytest.mark.parametrize(("name", "content", "code"), PARSER_BOMBS.values(),
                         ids=PARSER_BOMBS.keys())  # fmt: skip
def test_parser_bomb_ends_invalid(alice, post, name, content, code):
    dataset = Dataset.objects.get(pk=post(alice, name, content).json()["id"])
    assert dataset.status == "invalid"
    assert dataset.report["errors"][0]["code"] == code


def test_the_portal_upload_shows_the_refusal_and_stores_nothing(alice, client):
    client.force_login(alice)
    before = stored_files()
    response = client.post(
        "/studio/datasets/",
        {"file": upload("tickets.csv", gzip.compress(classification_csv()))},
        follow=True,
    )
    assert response.status_code == 200
    assert "Niche does not unpack uploads" in response.content.decode()
    assert Dataset.objects.count() == 0 and stored_files() == before


@pytest.mark.parametrize(
    "name", ["adapter_model.safetensors", "pytorch_model.bin", "w.pt", "w.pth", "m.ckpt", "x.pkl"]
)
def test_no_endpoint_takes_weights_files_as_an_upload(alice, post, name):
    """Niche has no weights upload; the only upload (datasets) refuses weights by name."""
    before = stored_files()
    response = post(alice, name, b"\x80\x04\x95" + bytes(16))
    assert_refused(response, 422, "unsupported_file_type", before, 0)


# Files that take uploads, reviewed for this suite: each new one must be added here after
# its checks (safe_weights for weights, upload_checks for data) have tests. Batch files:
# tests/serving/batches/test_batch_api.py (hostile files, bad lines, size and count caps).
# Private evaluations' rows: tests/hostile_inputs/test_hostile_evaluation_uploads.py.
REVIEWED_UPLOAD_SITES = {
    "evidence/admin.py",
    "evidence/apis.py",
    "frontend/evaluation_views.py",
    "frontend/studio_views.py",
    "serving/batch_apis.py",
    "training_worker/apis.py",
}


def upload_sites(source: str) -> bool:
    import ast

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ("FILES", "FileField", "ImageField"):
            return True
        if isinstance(node, ast.Name) and node.id in ("FileField", "ImageField"):
            return True
    return False


def test_every_upload_site_is_reviewed():
    from tests.hostile_inputs.test_no_unpickling_in_product_code import ROOT, product_files

    sites = {
        str(path.relative_to(ROOT))
        for path in product_files()
        if "migrations" not in path.parts and upload_sites(path.read_text())
    }
    assert sites == REVIEWED_UPLOAD_SITES
    assert upload_sites("def v(request):\n    return request.FILES['f']")  # the walk can fail
