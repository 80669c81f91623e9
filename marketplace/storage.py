"""The file storages every context writes through (settings: object_storage.py).

Downloads are streamed through Niche after the licence or owner check (the export
bundle); no page links to storage. Should a URL be made (`storage.url`), on S3 it is a
presigned one that expires after STORAGE_URL_EXPIRE_SECONDS, and names under
SEALED_PREFIX (the sealed evaluation splits) never get one, whatever the backend. The
bucket is private: objects are written with a private ACL, or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler

SEALED_PREFIX = "sealed/"
"""Every sealed split lives under this prefix: read by workers, never by a URL."""


def is_sealed(name: str) -> bool:
    """Whether `name` is under SEALED_PREFIX once normalised as both backends do
    ("a/../sealed/x", "/sealed/x" and "sealed\\x" are)."""
    normalised = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    return normalised.startswith(SEALED_PREFIX) or normalised == SEALED_PREFIX.rstrip("/")


def refuse_sealed(name: str) -> None:
    if is_sealed(name):
        raise SuspiciousFileOperation(f"{name} is sealed: no URL is ever made for it.")


class LocalStorage(FileSystemStorage):
    """The embedded default: files under MEDIA_ROOT on this machine (not served)."""

    def url(self, name):
        refuse_sealed(name)
        return super().url(name)


SPOOL_PREFIX = "niche-upload-"


def _spool_dir() -> Path:
    return Path(settings.FILE_UPLOAD_TEMP_DIR or tempfile.gettempdir())


class SpooledUpload(TemporaryUploadedFile):
    """An upload's temporary file, named after the process writing it
    (`niche-upload-<pid>-...`): should that process die mid-upload (SIGKILL, OOM), the
    next web process to start on the machine knows the file is an orphan."""

    def __init__(self, name, content_type, size, charset, content_type_extra=None):
        file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed with the upload)
            prefix=f"{SPOOL_PREFIX}{os.getpid()}-", suffix=".upload", dir=_spool_dir()
        )
        UploadedFile.__init__(self, file, name, content_type, size, charset, content_type_extra)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    # A killed process whose parent died too stays a zombie until init reaps it, and
    # kill(pid, 0) still succeeds: it will never finish its upload, so count it as dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux) or gone meanwhile
        return True
    return state not in ("Z", "X")


def upload_spools_sweep() -> int:
    """Remove the temporary files of uploads whose process is gone; returns how many.

    Run by every web process as it starts (marketplace/asgi.py): a web process killed
    mid-upload leaves its half-written spool behind, its replacement removes it. Files
    of live processes (uploads in flight) are left alone."""
    removed = 0
    for path in _spool_dir().glob(f"{SPOOL_PREFIX}*"):
        pid = path.name[len(SPOOL_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


class HashingUploadHandler(TemporaryFileUploadHandler):
    """Spools an upload to a temporary file in chunks, computing its SHA-256 on the way.

    The upload never sits whole in web memory (Django's MemoryFileUploadHandler before
    this one keeps only small files, up to FILE_UPLOAD_MAX_MEMORY_SIZE, in memory), and
    the stored copy is written from the temporary file part by part (S3: multipart).
    The file gets `sha256`, so nothing reads it a second time to hash it.
    """

    def new_file(self, *args, **kwargs):
        super(TemporaryFileUploadHandler, self).new_file(*args, **kwargs)
        self.file = SpooledUpload(
            self.file_name, self.content_type, 0, self.charset, self.content_type_extra
        )
        self._digest = hashlib.sha256()

    def receive_data_chunk(self, raw_data, start):
        self._digest.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size):
        uploaded = super().file_complete(file_size)
        uploaded.sha256 = self._digest.hexdigest()
        return uploaded
