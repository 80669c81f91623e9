"""Files of the studio, through Django's storage API (local disk or S3).

Model artifacts are content-addressed by SHA-256 and written once; working files of a
job (checkpoints) live under paths keyed by the job id, so a retry overwrites them.
"""

import hashlib
import json
from pathlib import Path

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

CHUNK = 1024 * 1024


def sha256_of_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def store_content_addressed(path: Path) -> tuple[str, str, int]:
    """Store a local file under its SHA-256; returns (storage name, sha256, size).

    Idempotent: identical bytes map to one name and are written once. A file already
    there whose size is not this file's is the remains of a writer that died half-way
    (a worker SIGKILLed mid-write, on a file system): it is replaced, never trusted.
    """
    sha256 = sha256_of_path(path)
    size = path.stat().st_size
    name = f"artifacts/sha256/{sha256[:2]}/{sha256}/{path.name}"
    if default_storage.exists(name) and default_storage.size(name) != size:
        default_storage.delete(name)
    if not default_storage.exists(name):
        with path.open("rb") as handle:
            saved = default_storage.save(name, File(handle))
        if saved != name:  # a concurrent writer won the race: same bytes, keep theirs
            default_storage.delete(saved)
    return name, sha256, size


def store_replacing(name: str, path: Path) -> str:
    """Store a file at exactly `name`, replacing what a previous attempt left there."""
    if default_storage.exists(name):
        default_storage.delete(name)
    with path.open("rb") as handle:
        return default_storage.save(name, File(handle))


def _files_under(prefix: str) -> list[str]:
    try:
        folders, files = default_storage.listdir(prefix)
    except FileNotFoundError:  # local storage: nothing was ever written there
        return []
    names = [f"{prefix}/{name}" for name in files]
    for folder in folders:
        names += _files_under(f"{prefix}/{folder}")
    return names


def checkpoints_prune_attempts(*, job_id, keep_attempt: int) -> int:
    """Delete the checkpoint files earlier attempts of a job left behind (a SIGKILLed
    attempt's, maybe half-written; no row points at them); returns how many. Only the
    attempt that ended the job calls this, so `keep_attempt` is the newest."""
    prefix = f"checkpoints/{job_id}"
    keep = f"{prefix}/attempt-{keep_attempt}/"
    stale = [name for name in _files_under(prefix) if not name.startswith(keep)]
    for name in stale:
        default_storage.delete(name)
    return len(stale)


def write_jsonl(name: str, rows: list[dict]) -> str:
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if default_storage.exists(name):
        default_storage.delete(name)
    return default_storage.save(name, ContentFile(body.encode()))


def read_jsonl(name: str) -> list[dict]:
    with default_storage.open(name, "rb") as handle:
        return [json.loads(line) for line in handle.read().decode().splitlines() if line]


def read_bytes(name: str) -> bytes:
    with default_storage.open(name, "rb") as handle:
        return handle.read()


def delete_quietly(*names: str) -> None:
    """Delete what exists of `names`. No existence check first: deleting a missing file
    is no error on either backend, and the web may delete sealed splits it has no
    right to read (docs/deploy.md)."""
    for name in names:
        if name:
            default_storage.delete(name)


def download_to(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with default_storage.open(name, "rb") as source, dest.open("wb") as target:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            target.write(chunk)
    return dest
