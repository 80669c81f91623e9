"""What an uploaded dataset file may be called and what its first bytes may be.

- A stored name is never derived from the client's filename (``datasets/<uuid>/source<ext>``,
  the extension from a fixed set); the client's name is only *displayed*, after
  ``display_filename`` has made it one harmless line.
- Compressed, archived and binary files are refused at upload (422) by their first bytes,
  whatever their extension says: Niche never inflates an upload, so no zip or gzip bomb
  can go off.
"""

from __future__ import annotations

import unicodedata

from training_worker.errors import DatasetNotUsable

MAX_FILENAME_CHARS = 255
SNIFF_BYTES = 8192
FALLBACK_NAME = "dataset"

_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"PK\x03\x04": "zip",
    b"PK\x05\x06": "zip",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"Rar!\x1a\x07": "rar",
    b"\x04\x22\x4d\x18": "lz4",
}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def display_filename(raw: str | None) -> str:
    """The client's filename made safe to show and store in a column: its last path
    component (``/`` or ``\\``), NFC, without control or format characters (NUL, CR/LF,
    bidi overrides such as U+202E, zero-width marks), without leading dots or spaces, at
    most 255 characters with its extension kept; ``dataset`` when nothing is left."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if not unicodedata.category(char).startswith("C"))
    name = name.strip().lstrip(".").strip()
    if not name:
        return FALLBACK_NAME
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and 0 < len(extension) <= 16:
            name = stem[: MAX_FILENAME_CHARS - len(extension) - 1] + "." + extension
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name


def display_text(raw: str, limit: int) -> str:
    """A free-text name (the dataset's) without control or format characters."""
    cleaned = "".join(c for c in raw if not unicodedata.category(c).startswith("C"))
    return cleaned.strip()[:limit]


def refuse_compressed_or_binary(head: bytes) -> None:
    """Refuse by the first bytes. Raises DatasetNotUsable (422) ``compressed_file`` or
    ``binary_file`` (a NUL byte without a UTF-16 byte-order mark)."""
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise DatasetNotUsable(
                f"This is a {kind} file. Niche does not unpack uploads: upload the plain "
                ".csv, .jsonl or .json file.",
                code="compressed_file",
                fields={"file": [f"{kind} content is not accepted."]},
            )
    if b"\x00" in head[:SNIFF_BYTES] and not head.startswith(_UTF16_BOMS):
        raise DatasetNotUsable(
            "The file holds NUL bytes: it is binary, or UTF-16/UTF-32 without a byte-order "
            "mark. Save it as UTF-8 text and upload it again.",
            code="binary_file",
            fields={"file": ["Not a text file."]},
        )
