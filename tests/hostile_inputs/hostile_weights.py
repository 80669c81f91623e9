"""Hostile weights files, built in-process: every one must be refused by every load point.

Each ``HostileCase`` builds ``(filename, bytes)`` for a canary path: the pickles in it,
if anything ever unpickled them, would create that file (``open(canary, "w")``).
``expected`` is the refusal code ``training_worker.ml.safe_weights`` must give.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training_worker.ml import safe_weights as sw


class CanaryPayload:
    """Unpickling this opens (creates) the canary file: proof that code ran."""

    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (open, (self.canary, "w"))


def pickle_payload(canary: Path, protocol: int = 4) -> bytes:
    return pickle.dumps({"lora_A.weight": CanaryPayload(canary)}, protocol=protocol)


def safetensors_bytes(
    tensors: dict[str, tuple[str, list[int], bytes]] | None = None,
    *,
    metadata: dict | None = None,
    header: dict | None = None,
    data: bytes | None = None,
) -> bytes:
    """A safetensors file; ``header``/``data`` override the computed ones (to lie)."""
    tensors = tensors if tensors is not None else {"w": ("F32", [2, 2], bytes(16))}
    computed: dict = {}
    blob = b""
    for name, (dtype, shape, raw) in tensors.items():
        computed[name] = entry(dtype, shape, [len(blob), len(blob) + len(raw)])
        blob += raw
    if metadata is not None:
        computed["__metadata__"] = metadata
    encoded = json.dumps(header if header is not None else computed).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + (blob if data is None else data)


def raw_header_file(header_text: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header_text)) + header_text + data


def zip_of(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


def seven_zip_of(name: str, content: bytes) -> bytes:
    import py7zr

    buffer = io.BytesIO()
    with py7zr.SevenZipFile(buffer, "w") as archive:
        archive.writestr(content, name)
    return buffer.getvalue()


def torch_save_of(canary: Path) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"lora_A.weight": CanaryPayload(canary)}, buffer)
    return buffer.getvalue()


def entry(dtype: str, shape: list, offsets: list) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


ST = "adapter_model.safetensors"


@dataclass(frozen=True)
class HostileCase:
    id: str
    family: str
    expected: str
    build: Callable[[Path], tuple[str, bytes]]  # canary -> (filename, bytes)


def _cases() -> list[HostileCase]:
    H = HostileCase
    valid = safetensors_bytes({"a": ("F32", [2], bytes(8)), "b": ("F16", [4], bytes(8))})
    cases = [
        # --- pickles under a safetensors name
        H("pickle-proto4", "pickle", sw.PICKLE_PAYLOAD, lambda c: (ST, pickle_payload(c))),
        H("pickle-proto2", "pickle", sw.PICKLE_PAYLOAD, lambda c: (ST, pickle_payload(c, 2))),
        H("pickle-proto5", "pickle", sw.PICKLE_PAYLOAD, lambda c: (ST, pickle_payload(c, 5))),
        # protocol 0 has no PROTO opcode: its first 8 bytes read as an absurd header length
        H("pickle-proto0", "pickle", sw.HEADER_TOO_LARGE, lambda c: (ST, pickle_payload(c, 0))),
        # --- wrapped pickles
        H("torch-save-zip", "wrapped-pickle", sw.ARCHIVE, lambda c: (ST, torch_save_of(c))),
        H("zip-wrapped-pickle", "wrapped-pickle", sw.ARCHIVE,
                    lambda c: (ST, zip_of("archive/data.pkl", pickle_payload(c)))),
        H("7z-wrapped-pickle", "wrapped-pickle", sw.ARCHIVE,
                    lambda c: (ST, seven_zip_of("data.pkl", pickle_payload(c)))),
        H("gzip-wrapped-pickle", "wrapped-pickle", sw.ARCHIVE,
                    lambda c: (ST, gzip.compress(pickle_payload(c)))),
        # --- pickle-format file types, whatever their content
        *[
            H(f"suffix{suffix}", "pickle-file-type", sw.FORBIDDEN_FILE_TYPE,
                        lambda c, s=suffix: (f"adapter_model{s}", pickle_payload(c)))
            for suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")
        ],
        H("suffix.bin-torch-zip", "pickle-file-type", sw.FORBIDDEN_FILE_TYPE,
                    lambda c: ("pytorch_model.bin", torch_save_of(c))),
        # --- truncated
        H("truncated-empty", "truncated", sw.TRUNCATED, lambda c: (ST, b"")),
        H("truncated-in-length", "truncated", sw.TRUNCATED, lambda c: (ST, valid[:5])),
        H("truncated-in-header", "truncated", sw.TRUNCATED, lambda c: (ST, valid[:40])),
        H("truncated-in-data", "truncated", sw.BAD_OFFSETS, lambda c: (ST, valid[:-3])),
        # --- polyglots
        H("polyglot-zip-appended", "polyglot", sw.TRAILING_DATA,
                    lambda c: (ST, valid + zip_of("data.pkl", pickle_payload(c)))),
        H("polyglot-pickle-appended", "polyglot", sw.TRAILING_DATA,
                    lambda c: (ST, valid + pickle_payload(c))),
        H("polyglot-zip-prefixed", "polyglot", sw.ARCHIVE,
                    lambda c: (ST, zip_of("data.pkl", pickle_payload(c)) + valid)),
        H("polyglot-pickle-in-header-padding", "polyglot", sw.INVALID_HEADER,
                    lambda c: (ST, raw_header_file(
                        json.dumps({"w": entry("F32", [1], [0, 4])}).encode() + pickle_payload(c),
                        bytes(4)))),
        # --- header size
        H("header-over-100MB", "header-size", sw.HEADER_TOO_LARGE,
                    lambda c: (ST, struct.pack("<Q", 100_000_001) + b"{}")),
        H("header-u64-max", "header-size", sw.HEADER_TOO_LARGE,
                    lambda c: (ST, struct.pack("<Q", 2**64 - 1) + b"{}")),
        # --- offsets
        H("offsets-overlapping", "offsets", sw.BAD_OFFSETS,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", [2], [0, 8]),
                                                             "b": entry("F32", [2], [4, 12])},
                                                     data=bytes(12)))),
        H("offsets-aliased", "offsets", sw.BAD_OFFSETS,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", [2], [0, 8]),
                                                             "b": entry("F32", [2], [0, 8])},
                                                     data=bytes(8)))),
        H("offsets-out-of-range", "offsets", sw.BAD_OFFSETS,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", [4], [0, 16])},
                                                     data=bytes(8)))),
        H("offsets-huge", "offsets", sw.BAD_OFFSETS,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("U8", [2**40], [0, 2**40])},
                                                     data=bytes(8)))),
        H("offsets-gap", "offsets", sw.BAD_OFFSETS,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", [1], [4, 8])},
                                                     data=bytes(8)))),
        H("offsets-reversed", "offsets", sw.BAD_OFFSETS,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", [1], [8, 4])},
                                                     data=bytes(8)))),
        H("offsets-negative", "offsets", sw.BAD_OFFSETS,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", [1], [-4, 0])},
                                                     data=bytes(4)))),
        H("offsets-three-values", "offsets", sw.BAD_OFFSETS,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", [1], [0, 4, 8])},
                                                     data=bytes(4)))),
        # --- dtype and shape
        H("dtype-shape-mismatch", "dtype-shape", sw.SIZE_MISMATCH,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", [2, 2], [0, 8])},
                                                     data=bytes(8)))),
        H("dtype-unknown", "dtype-shape", sw.UNKNOWN_DTYPE,
                    lambda c: (ST, safetensors_bytes({"a": ("F128", [1], bytes(16))}))),
        H("dtype-object", "dtype-shape", sw.UNKNOWN_DTYPE,
                    lambda c: (ST, safetensors_bytes({"a": ("O", [1], bytes(8))}))),
        H("shape-not-integers", "dtype-shape", sw.INVALID_HEADER,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", ["2"], [0, 8])},
                                                     data=bytes(8)))),
        H("shape-negative", "dtype-shape", sw.INVALID_HEADER,
                    lambda c: (ST, safetensors_bytes(header={"a": entry("F32", [-2], [0, 8])},
                                                     data=bytes(8)))),
        # --- header structure
        H("header-not-json", "header", sw.INVALID_HEADER,
                    lambda c: (ST, raw_header_file(b"{not json}      ", bytes(4)))),
        H("header-json-array", "header", sw.INVALID_HEADER,
                    lambda c: (ST, raw_header_file(b"[1, 2, 3]       "))),
        H("header-not-utf8", "header", sw.INVALID_HEADER,
                    lambda c: (ST, raw_header_file(b'{"\xff\xfe": 1}      '))),
        H("header-duplicate-tensor", "header", sw.INVALID_HEADER,
                    lambda c: (ST, raw_header_file(
                        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                        b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
                        bytes(8)))),
        H("header-extra-field", "header", sw.INVALID_HEADER,
                    lambda c: (ST, safetensors_bytes(
                        header={"a": {**entry("F32", [1], [0, 4]), "pickle": "x"}},
                        data=bytes(4)))),
        H("metadata-not-strings", "header", sw.INVALID_HEADER,
                    lambda c: (ST, safetensors_bytes(metadata={"format": {"nested": 1}}))),
    ]  # fmt: skip
    return cases


HOSTILE_CASES = _cases()
CASE_IDS = [case.id for case in HOSTILE_CASES]
