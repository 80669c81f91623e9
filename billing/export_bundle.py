"""Export bundles: a model version as a zip its holder runs on their own machines.

The zip holds the adapter exactly as the platform stores it (`adapter_model.safetensors`,
`adapter_config.json`), the lexical head served blended with it when the version has one
(`lexical_head.safetensors`, see training_worker.ml.lexical_head), `load.py` (a loader
that needs no Niche code: `python load.py --base <folder> "text"` checks the files, builds
the base as serving does, applies the adapter and the blend, and prints what the gateway
answers; billing/bundle_loader), `base_model.json` (the base's id, revision and Hub id,
the head, the token limit served, how to load and how to blend), the platform's
`evaluation.json`, the model card as `README.md`, `LICENSE.txt` naming the licensee and
the date, `MANIFEST.json` (SHA-256 and size of every other file) and `MANIFEST.sig`
(the raw 64-byte Ed25519 signature of MANIFEST.json's bytes, see billing.signing).

Who may download: the version's owner, and the holder of a live download licence of a
listing that has served the version. Everyone else gets what `GET /api/v1/models/{id}`
answers them (404 `model_not_found`), except a caller who holds or held a licence of
such a listing: 403 `licence_required` tells them nothing they do not know. Every download
is recorded.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from billing.bundle_loader import LOADER_FILENAME, loader_source
from billing.errors import AdapterFileRefused, LicenceRequired
from billing.models import ExportDownload, Licence, OfferKind
from billing.selectors import licence_grants_access_q
from billing.signing import platform_signing_key
from billing.terms import LicenceTerms
from listings.models import ListingVersion
from training_worker.artifacts import CHUNK
from training_worker.errors import ModelVersionNotFound
from training_worker.ml.pooling import classification_head, how_to_load
from training_worker.ml.safe_weights import (
    UnsafeWeightsError,
    check_weights_filename,
    validate_safetensors_stream,
)
from training_worker.models import ModelVersion
from training_worker.selectors import base_model_provenance

BUNDLE_FORMAT = "niche-export-bundle/1"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
# Tokens of a text a classification version reads when its run record names no
# max_seq_length: serving.engine.runner.CLASSIFICATION_MAX_TOKENS (billing may not import
# serving; tests/billing/test_bundle_loader.py holds the two equal).
SERVED_MAX_TOKENS_DEFAULT = 256


class BundleIntegrityError(Exception):
    """A stored adapter file no longer has the SHA-256 recorded when it was written."""


@dataclass(frozen=True)
class BundleFile:
    """One file of the bundle: stored bytes (read from storage while streaming) or
    bytes generated for this download."""

    name: str
    sha256: str
    size: int
    storage_name: str = ""
    content: bytes = b""

    @classmethod
    def generated(cls, name: str, content: bytes) -> BundleFile:
        return cls(name, hashlib.sha256(content).hexdigest(), len(content), content=content)


@dataclass(frozen=True)
class ExportBundle:
    version: ModelVersion
    files: tuple[BundleFile, ...]
    manifest: bytes
    signature: bytes

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()

    @property
    def filename(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.version.name)
        return f"{safe}-{str(self.version.pk)[:8]}.zip"


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _yes_no(value: bool, yes: str, no: str) -> str:
    return yes if value else no


def licence_text(
    *, version: ModelVersion, licensee: User, licence: Licence | None, issued_at: datetime
) -> str:
    """LICENSE.txt: who may use these files, under which terms, since when."""
    lines = [
        f"Niche export licence — {version.name}",
        "",
        f"Licensee: {licensee.name} <{licensee.email}>",
        f"Issued: {issued_at:%Y-%m-%d} (this copy downloaded {issued_at:%Y-%m-%d %H:%M} UTC)",
        f"Model version: {version.pk}",
        f"Adapter SHA-256: {version.adapter_sha256}",
        f"Base model: {version.base_model.source}"
        + (f" @ {version.base_model.revision}" if version.base_model.revision else ""),
        f"Base model licence: {version.base_model.licence} (applies to the base weights)",
        "",
    ]
    if licence is None:
        lines += [
            "Owner's copy: the licensee trained this adapter on Niche and owns it.",
            "",
        ]
        return "\n".join(lines)
    terms = LicenceTerms.from_json(licence.terms)
    granted = licence.activated_at or licence.created_at
    listing = licence.listing
    lines += [
        f"Licensor: {listing.owner.name}, through the Niche listing “{listing.title}” "
        f"({listing.slug})",
        f"Licence: {licence.pk}, granted {granted:%Y-%m-%d}"
        + (" (sandbox: no payment was taken)" if licence.sandbox else ""),
        "",
        "Terms agreed at purchase (they never change under the licensee):",
        "- Commercial use: "
        + _yes_no(terms.commercial_use, "allowed", "not allowed (research and evaluation only)"),
        "- Derivatives (fine-tuning, merging, distillation): "
        + _yes_no(terms.derivatives_allowed, "allowed", "not allowed"),
        "- Running on the licensee's own machines: "
        + _yes_no(terms.on_prem_download, "allowed", "allowed for this downloaded copy only"),
        "- Attribution: "
        + _yes_no(terms.attribution_required, f"credit {listing.owner.name}", "not required"),
        "- Redistribution of these files: not allowed",
        "",
    ]
    if listing.licence_summary:
        lines += ["Listing's licence summary:", listing.licence_summary, ""]
    return "\n".join(lines)


def _served_classification_head(version: ModelVersion) -> str:
    """The head the serving engine builds for this version: read from the stored adapter's
    tensor names, as the engine reads it (a run record may not name it). "" for generation."""
    if version.task != "text-classification":
        return ""
    size = default_storage.size(version.adapter_path)
    with default_storage.open(version.adapter_path, "rb") as handle:
        header = validate_safetensors_stream(handle, size)
    return classification_head(tensor.name for tensor in header.tensors)


def _served_max_tokens(version: ModelVersion) -> int:
    """Tokens of a text the gateway has the engine read (serving.gateway._served_version)."""
    resolved = (version.run_record or {}).get("resolved_hyperparameters") or {}
    max_seq_length = resolved.get("max_seq_length")
    return max_seq_length if isinstance(max_seq_length, int) else SERVED_MAX_TOKENS_DEFAULT


def _base_model_document(version: ModelVersion) -> dict:
    base = version.base_model
    head = _served_classification_head(version)
    provenance = base_model_provenance(base_model=base) or {}
    return {
        "id": base.source,
        "revision": base.revision or None,
        "hub_id": provenance.get("hub_id"),
        **({"package": provenance["package"]} if provenance else {}),
        "slug": base.slug,
        "architecture": base.architecture,
        "licence": base.licence,
        "task": version.task,
        "labels": list(version.labels),
        **(
            {"classification_head": head, "max_seq_length": _served_max_tokens(version)}
            if head
            else {}
        ),
        "loader": LOADER_FILENAME,
        "how_to_load": how_to_load(version.task, head),
        **({"blend": _blend_document(version)} if version.lexical_head_path else {}),
    }


def _blend_document(version: ModelVersion) -> dict:
    """How the served probabilities are made from the two files, for base_model.json."""
    from training_worker.ml.evaluation_report import read_evaluation
    from training_worker.ml.lexical_head import FILENAME, METHOD

    report = read_evaluation(version.evaluation)
    weight = report.blend.weight if report and report.blend else None
    return {
        "file": FILENAME,
        "adapter_weight": weight,
        "method": METHOD,
        "how_to_apply": (
            "load.py applies it. p = w * softmax(adapter logits) + (1 - w) * p_lexical(text), "
            f"w = adapter_weight (also in {FILENAME}'s __metadata__ config). "
            f"{FILENAME} holds, per TF-IDF block named in its __metadata__ config, the terms "
            "(<block>.terms UTF-8 bytes cut at <block>.offsets), their idf (<block>.idf), "
            "then coef and intercept of a logistic regression over the blocks' L2-normalised "
            "features side by side (one row: sigmoid for two classes; else softmax) and the "
            "label ids it knows (classes). scikit-learn's TfidfVectorizer with the block's "
            "analyzer, ngram_range and sublinear_tf, vocabulary = the terms, reproduces the "
            "features. The terms are only those that at least min_training_rows (k, in the "
            "__metadata__ config) distinct training rows share, so no word of a single "
            "training row is in the file; words of a text outside the terms add nothing."
        ),
    }


def export_bundle_build(
    *, version: ModelVersion, licensee: User, licence: Licence | None, issued_at: datetime
) -> ExportBundle:
    """The bundle's files, its manifest and the platform's signature over the manifest.

    The adapter files' hashes are the ones recorded when the version was written
    (content-addressed storage); streaming re-hashes them and stops on a mismatch.
    """
    files = (
        *(
            BundleFile(f.name, f.sha256, f.size, storage_name=f.storage_name)
            for f in version.stored_files
        ),
        BundleFile.generated("base_model.json", _json_bytes(_base_model_document(version))),
        BundleFile.generated(LOADER_FILENAME, loader_source()),
        BundleFile.generated("evaluation.json", _json_bytes(version.evaluation)),
        BundleFile.generated("README.md", version.card.encode()),
        BundleFile.generated(
            "LICENSE.txt",
            licence_text(
                version=version, licensee=licensee, licence=licence, issued_at=issued_at
            ).encode(),
        ),
    )
    key = platform_signing_key()
    manifest = _json_bytes(
        {
            "format": BUNDLE_FORMAT,
            "model_version": str(version.pk),
            "name": version.name,
            "licence": str(licence.pk) if licence else None,
            "licensee": {"name": licensee.name, "email": licensee.email},
            "issued_at": issued_at.isoformat(),
            "signature": {"algorithm": "Ed25519", "key_id": key.key_id, "file": SIGNATURE},
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in files],
        }
    )
    return ExportBundle(
        version=version, files=files, manifest=manifest, signature=key.sign(manifest)
    )


def _download_grant(*, user: User, version_id, lock: bool) -> tuple[ModelVersion, Licence | None]:
    """The version and the licence that lets `user` download it (None for its owner).

    Anyone but the owner needs a download licence that grants access now, by the rule
    calls follow (billing.selectors.licence_grants_access_q: live, its listing published
    or winding down after a delisting, its expert active), of a listing that has put the
    version live, now or before. Without one: 403 `licence_required` to a caller who holds
    or held any licence of such a listing; to everyone else exactly what the studio's
    `GET /api/v1/models/{id}` answers them (404 `model_not_found`), so the answer never
    tells a stranger that the version exists. With `lock`, the licence row is held (call
    inside a transaction).
    """
    version = (
        ModelVersion.objects.select_related("base_model", "owner").filter(pk=version_id).first()
    )
    if version is None:
        raise ModelVersionNotFound("No model version with this id.")
    if version.owner_id == user.pk:
        return version, None
    served_on = ListingVersion.objects.filter(model_version=version).values("listing_id")
    if not served_on.exists():
        raise ModelVersionNotFound("No model version with this id.")
    licences = (
        Licence.objects.filter(licence_grants_access_q(timezone.now()))
        .filter(buyer=user, listing_id__in=served_on, kind=OfferKind.DOWNLOAD)
        .select_related("listing__owner")
    )
    if lock:
        licences = licences.select_for_update(of=("self",))
    licence = licences.first()
    if licence is None:
        if not Licence.objects.filter(buyer=user, listing_id__in=served_on).exists():
            raise ModelVersionNotFound("No model version with this id.")  # as the studio
        raise LicenceRequired(
            "Downloading this model needs a download licence of its listing that is live, "
            "on a listing that is on sale (or winding down after its expert delisted it)."
        )
    return version, licence


def export_bundle_refuse_unsafe_adapter(*, version: ModelVersion) -> None:
    """Refuse to ship weights (the adapter, the lexical head) that fail the strict
    safetensors check (a pickle, a truncated or polyglot file...), and a lexical head of an
    older format, which may hold words of single training rows (field code
    `lexical_head_outdated`, see training_worker.ml.lexical_head): reads only the stored
    files' headers, from any storage. Raises AdapterFileRefused (409) naming the file."""
    from training_worker.ml import lexical_head

    for stored in version.stored_files:
        if not stored.is_weights:
            continue
        try:
            check_weights_filename(stored.storage_name)
            size = default_storage.size(stored.storage_name)
            with default_storage.open(stored.storage_name, "rb") as handle:
                header = validate_safetensors_stream(handle, size)
        except UnsafeWeightsError as exc:
            raise AdapterFileRefused(
                f"This version's stored {stored.name} is refused: {exc.message}",
                fields={stored.name: [exc.code]},
            ) from exc
        if stored.name == lexical_head.FILENAME:
            try:
                lexical_head.check_metadata(header.metadata)
            except lexical_head.LexicalHeadInvalid as exc:
                raise AdapterFileRefused(
                    f"This version's stored {stored.name} is refused: {exc}",
                    fields={stored.name: [exc.code]},
                ) from exc


def export_bundle_check(*, user: User, version_id) -> ModelVersion:
    """Whether `user` may download the bundle now, without building or recording one
    (what a HEAD request asks). Raises as export_bundle_download does."""
    version, _ = _download_grant(user=user, version_id=version_id, lock=False)
    return version


def export_bundle_download(*, user: User, version_id) -> ExportBundle:
    """Check the right to download, build the bundle and record the download.

    The licence row is locked while the download is recorded, so a revocation that
    commits first refuses it. Raises ModelVersionNotFound (404), LicenceRequired (403),
    AdapterFileRefused (409) when the stored adapter fails the safetensors check.
    """
    issued_at = timezone.now()
    with transaction.atomic():
        version, licence = _download_grant(user=user, version_id=version_id, lock=True)
        export_bundle_refuse_unsafe_adapter(version=version)
        bundle = export_bundle_build(
            version=version, licensee=user, licence=licence, issued_at=issued_at
        )
        ExportDownload.objects.create(
            user=user,
            licence=licence,
            model_version=version,
            manifest_sha256=bundle.manifest_sha256,
            created_at=issued_at,
        )
    return bundle


class _ChunkSink:
    """A write-only file object: zipfile writes into it, the stream drains it."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from chunks


def _stored_chunks(item: BundleFile) -> Iterator[bytes]:
    digest = hashlib.sha256()
    with default_storage.open(item.storage_name, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            yield chunk
    if digest.hexdigest() != item.sha256:
        # The zip stops here, unfinished: no client can take it for a complete bundle.
        raise BundleIntegrityError(f"{item.storage_name} does not match its recorded SHA-256.")


def export_bundle_stream(bundle: ExportBundle) -> Iterator[bytes]:
    """The zip, chunk by chunk, without holding the adapter in memory.

    Adapter weights are already dense floats: stored uncompressed; text is deflated.
    """
    sink = _ChunkSink()
    with zipfile.ZipFile(sink, mode="w") as archive:  # type: ignore[arg-type]
        for item in bundle.files:
            compression = zipfile.ZIP_STORED if item.storage_name else zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo(item.name, date_time=bundle.version.created_at.timetuple()[:6])
            info.compress_type = compression
            info.file_size = item.size
            with archive.open(info, mode="w", force_zip64=item.size > 2**31) as entry:
                chunks = _stored_chunks(item) if item.storage_name else iter((item.content,))
                for chunk in chunks:
                    entry.write(chunk)
                    yield from sink.drain()
            yield from sink.drain()
        for name, content in ((MANIFEST, bundle.manifest), (SIGNATURE, bundle.signature)):
            archive.writestr(zipfile.ZipInfo(name, bundle.version.created_at.timetuple()[:6]),
                             content, compress_type=zipfile.ZIP_DEFLATED)  # fmt: skip
            yield from sink.drain()
    yield from sink.drain()
