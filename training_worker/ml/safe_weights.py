"""The one gate every weights file passes before anything parses it: safetensors only, checked.

Niche never unpickles a model file. Each load point (adapters read from storage by the
serving engine and by evaluation, export bundles, base models from the cache) calls one of
the functions below with bytes, a file object or a path, so the check is the same whether
the file came from local disk or S3. They raise ``UnsafeWeightsError`` with a stable
``code`` (one of ``REFUSAL_CODES``) and a sentence; nothing is loaded then.

The safetensors header is parsed here, before the safetensors library sees it:

- 8 bytes little-endian header length ``N``, ``N <= MAX_HEADER_BYTES`` (100 MB, the
  format's own cap), ``8 + N`` no longer than the file;
- the header is one UTF-8 JSON object (trailing spaces allowed: the format pads with
  them), no duplicate keys; ``__metadata__`` maps strings to strings;
- each tensor names a known ``dtype``, a ``shape`` of non-negative ints and
  ``data_offsets`` ``[begin, end]``; sorted by ``begin`` the tensors tile the data section
  exactly (from 0, no gap, no overlap), ``end - begin == numel * itemsize``, and the data
  section ends where the file ends (bytes after it make a polyglot: refused).

Pure Python, no Django, no torch: the web process may call it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 100_000
SAFETENSORS_SUFFIX = ".safetensors"
# Formats that are (or wrap) pickles, or that the loaders would unpickle: never read.
PICKLE_SUFFIXES = frozenset(
    {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz", ".h5"}
)

# Item size in bytes per safetensors dtype; anything else (sub-byte floats included) is refused.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}

PICKLE_PAYLOAD = "pickle_payload"
ARCHIVE = "archive_not_safetensors"
FORBIDDEN_FILE_TYPE = "forbidden_file_type"
TRUNCATED = "truncated"
HEADER_TOO_LARGE = "header_too_large"
INVALID_HEADER = "invalid_header"
UNKNOWN_DTYPE = "unknown_dtype"
BAD_OFFSETS = "bad_offsets"
SIZE_MISMATCH = "dtype_shape_mismatch"
TRAILING_DATA = "trailing_data"
MISSING_WEIGHTS = "missing_weights"
REFUSAL_CODES = (
    PICKLE_PAYLOAD,
    ARCHIVE,
    FORBIDDEN_FILE_TYPE,
    TRUNCATED,
    HEADER_TOO_LARGE,
    INVALID_HEADER,
    UNKNOWN_DTYPE,
    BAD_OFFSETS,
    SIZE_MISMATCH,
    TRAILING_DATA,
    MISSING_WEIGHTS,
)

# First bytes of containers a weights file must never be; a clearer code than "bad length".
_ARCHIVE_MAGIC = {
    b"PK\x03\x04": "a zip archive (a torch checkpoint or a wrapped pickle)",
    b"PK\x05\x06": "a zip archive",
    b"7z\xbc\xaf\x27\x1c": "a 7z archive",
    b"\x1f\x8b": "a gzip stream",
    b"BZh": "a bzip2 stream",
    b"\xfd7zXZ\x00": "an xz stream",
    b"\x28\xb5\x2f\xfd": "a zstd stream",
    b"\x89HDF": "an HDF5 file",
}


class UnsafeWeightsError(ValueError):
    """A weights file refused before any parser but ours read it."""

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    header_bytes: int  # N, the JSON header's declared length
    data_bytes: int  # the data section's length
    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str]


def check_weights_filename(name: str) -> None:
    """Refuse a weights file by name: it must end in ``.safetensors``."""
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeWeightsError(
            FORBIDDEN_FILE_TYPE,
            f"{suffix} weights are pickle-based and are never loaded; use safetensors.",
        )
    if suffix != SAFETENSORS_SUFFIX:
        raise UnsafeWeightsError(
            FORBIDDEN_FILE_TYPE, f"Only .safetensors weights are accepted, not {suffix or name!r}."
        )


def _sniff(prefix: bytes) -> None:
    for magic, what in _ARCHIVE_MAGIC.items():
        if prefix.startswith(magic):
            raise UnsafeWeightsError(ARCHIVE, f"The file is {what}, not safetensors.")
    # Pickle protocol 2+ opens with PROTO (0x80) and the protocol number.
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        raise UnsafeWeightsError(PICKLE_PAYLOAD, "The file is a pickle, not safetensors.")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise UnsafeWeightsError(INVALID_HEADER, f"The header names {key[:80]!r} twice.")
        seen[key] = value
    return seen


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_header(header: bytes, data_bytes: int) -> SafetensorsHeader:
    """Check a header's JSON against a data section of ``data_bytes`` bytes."""
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeWeightsError(INVALID_HEADER, "The header is not UTF-8.") from exc
    stripped = text.rstrip(" ")
    if not stripped.startswith("{"):
        raise UnsafeWeightsError(INVALID_HEADER, "The header is not a JSON object.")
    try:
        document = json.loads(stripped, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        raise UnsafeWeightsError(INVALID_HEADER, f"The header is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise UnsafeWeightsError(INVALID_HEADER, "The header is not a JSON object.")
    metadata = document.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise UnsafeWeightsError(INVALID_HEADER, "__metadata__ must map strings to strings.")
    if len(document) > MAX_TENSORS:
        raise UnsafeWeightsError(INVALID_HEADER, f"More than {MAX_TENSORS:,} tensors.")
    tensors = []
    for name, entry in document.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise UnsafeWeightsError(
                INVALID_HEADER,
                f"Tensor {name[:80]!r} must have exactly dtype, shape and data_offsets.",
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise UnsafeWeightsError(
                UNKNOWN_DTYPE, f"Tensor {name[:80]!r} has unknown dtype {str(dtype)[:20]!r}."
            )
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise UnsafeWeightsError(
                INVALID_HEADER, f"Tensor {name[:80]!r}: shape must be non-negative integers."
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise UnsafeWeightsError(
                BAD_OFFSETS, f"Tensor {name[:80]!r}: data_offsets must be [begin, end] >= 0."
            )
        begin, end = offsets
        if begin > end or end > data_bytes:
            raise UnsafeWeightsError(
                BAD_OFFSETS,
                f"Tensor {name[:80]!r}: offsets [{begin}, {end}] are outside the "
                f"{data_bytes}-byte data section.",
            )
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise UnsafeWeightsError(
                SIZE_MISMATCH,
                f"Tensor {name[:80]!r}: {dtype} {shape} needs {expected} bytes, "
                f"its offsets span {end - begin}.",
            )
        tensors.append(TensorEntry(name, dtype, tuple(shape), begin, end))
    position = 0
    for tensor in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if tensor.begin != position:
            what = "overlaps the previous one" if tensor.begin < position else "leaves a gap"
            raise UnsafeWeightsError(
                BAD_OFFSETS, f"Tensor {tensor.name[:80]!r} at byte {tensor.begin} {what}."
            )
        position = tensor.end
    if position != data_bytes:
        raise UnsafeWeightsError(
            TRAILING_DATA,
            f"{data_bytes - position} bytes follow the last tensor (a polyglot file?).",
        )
    return SafetensorsHeader(
        header_bytes=len(header), data_bytes=data_bytes, tensors=tuple(tensors), metadata=metadata
    )


def _validate(read: Callable[[int], bytes], total_size: int) -> SafetensorsHeader:
    prefix = read(8)
    if len(prefix) < 8 or total_size < 8:
        if prefix:
            _sniff(prefix)
        raise UnsafeWeightsError(TRUNCATED, "The file is shorter than a safetensors header.")
    _sniff(prefix)
    (declared,) = struct.unpack("<Q", prefix)
    if declared > MAX_HEADER_BYTES:
        raise UnsafeWeightsError(
            HEADER_TOO_LARGE,
            f"The header declares {declared:,} bytes; at most {MAX_HEADER_BYTES:,} are read.",
        )
    if declared < 2:
        raise UnsafeWeightsError(INVALID_HEADER, "The header is empty.")
    if 8 + declared > total_size:
        raise UnsafeWeightsError(
            TRUNCATED,
            f"The header declares {declared:,} bytes but the file has {total_size - 8:,} after it.",
        )
    header = read(declared)
    if len(header) != declared:
        raise UnsafeWeightsError(TRUNCATED, "The file ended inside its header.")
    return parse_header(header, total_size - 8 - declared)


def validate_safetensors_bytes(data: bytes | bytearray | memoryview) -> SafetensorsHeader:
    """Check a whole safetensors file held in memory. Raises ``UnsafeWeightsError``."""
    view = memoryview(data)
    cursor = 0

    def read(n: int) -> bytes:
        nonlocal cursor
        chunk = bytes(view[cursor : cursor + n])
        cursor += len(chunk)
        return chunk

    return _validate(read, len(view))


def validate_safetensors_stream(handle: BinaryIO, total_size: int) -> SafetensorsHeader:
    """Check a safetensors file through an open binary handle (local or remote storage) of
    ``total_size`` bytes, reading only its header. Raises ``UnsafeWeightsError``."""
    return _validate(handle.read, total_size)


def validate_safetensors_file(path: str | Path) -> SafetensorsHeader:
    """Check a local file by name and header (its data section by its size)."""
    path = Path(path)
    check_weights_filename(path.name)
    with path.open("rb") as handle:
        return validate_safetensors_stream(handle, path.stat().st_size)


def checked_weights_headers(directory: str | Path) -> dict[Path, SafetensorsHeader]:
    """Refuse a model or adapter folder holding any pickle-format file, check every
    ``.safetensors`` in it, and return each one's parsed header (callers that need tensor
    names read them here rather than parsing again); a folder with none is refused too."""
    directory = Path(directory)
    found: dict[Path, SafetensorsHeader] = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise UnsafeWeightsError(
                FORBIDDEN_FILE_TYPE,
                f"{path.relative_to(directory)} is a pickle-based weights file; it is never "
                "loaded, and a folder holding one is refused.",
            )
        if suffix == SAFETENSORS_SUFFIX:
            found[path] = validate_safetensors_file(path)
    if not found:
        raise UnsafeWeightsError(MISSING_WEIGHTS, f"No .safetensors weights in {directory.name}.")
    return found
