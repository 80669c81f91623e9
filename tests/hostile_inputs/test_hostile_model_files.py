"""Every place that loads weights refuses every hostile file, with the code safe_weights
gives, and never runs the pickle inside; benign peft adapters still load everywhere.

Load points (the ``point`` part of each test id):
- ``validator``: training_worker.ml.safe_weights on the bytes;
- ``serving-engine``: serving.engine.registry.ModelRegistry reading an adapter from storage;
- ``adapter-folder``: training_worker.ml.inference.load_adapter_model (evaluation, tests);
- ``base-model-cache``: training_worker.ml.base_models.load_tokenizer_and_model on a cache
  folder;
- ``export-bundle``: GET /api/v1/models/{id}/export of a version whose stored adapter is
  hostile (409 ``adapter_file_refused``, no download recorded);
- ``serving-engine`` and ``export-bundle`` run once for each stored file of a version: its
  adapter, and its lexical head (``training_worker.ml.lexical_head``) beside a benign
  adapter (the ``adapter``/``lexical-head`` part of the id).

Count: ``pytest --collect-only -q tests/hostile_inputs/test_hostile_model_files.py`` lists one
id per (load point, case); ``-k refused`` selects the hostile ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from serving.engine.registry import AdapterUnavailable, ModelRegistry
from serving.engine.synthetic import BuiltAdapter, build_adapter, read_local_bytes
from serving.protocol import TEXT_GENERATION
from tests.hostile_inputs.hostile_weights import (
    CASE_IDS,
    HOSTILE_CASES,
    ST,
    CanaryPayload,
    HostileCase,
    safetensors_bytes,
)
from training_worker.ml import safe_weights as sw
from training_worker.ml.errors import BaseModelUnavailable


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from training_worker.ml.base_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-base"), seed=0)


@pytest.fixture(scope="module")
def benign_adapter(tiny_base, tmp_path_factory) -> BuiltAdapter:
    """A real peft ``save_pretrained`` of a LoRA on the tiny causal LM."""
    from training_worker.ml.base_models import load_tokenizer_and_model

    _, model = load_tokenizer_and_model(tiny_base, None, TEXT_GENERATION)
    return build_adapter(model, TEXT_GENERATION, tmp_path_factory.mktemp("benign") / "a", seed=3)


@pytest.fixture(scope="module")
def engine(tiny_base) -> ModelRegistry:
    registry = ModelRegistry(
        resolve_base={"tiny-causal": str(tiny_base)}.__getitem__,
        read_bytes=read_local_bytes,
        cache_bytes=64 * 2**20,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    registry.base("tiny-causal", TEXT_GENERATION)
    return registry


@pytest.fixture
def canary(tmp_path) -> Path:
    path = tmp_path / "canary" / "PWNED"
    path.parent.mkdir()
    yield path
    assert not path.exists(), "a hostile payload ran: the canary file was created"


def hostile_file(case: HostileCase, canary: Path, folder: Path) -> Path:
    name, content = case.build(canary)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path


def test_the_canary_payload_is_live(tmp_path):
    """The fixtures are real weapons: unpickling one creates its canary (so a test that
    finds no canary means nothing unpickled it)."""
    canary = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(CanaryPayload(canary)))  # noqa: S301  the test's own payload
    assert canary.exists()


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=CASE_IDS)
def test_validator_refused(case, canary):
    name, content = case.build(canary)
    with pytest.raises(sw.UnsafeWeightsError) as refused:
        sw.check_weights_filename(name)
        sw.validate_safetensors_bytes(content)
    assert refused.value.code == case.expected, refused.value.message


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """Which stored file of a version is hostile: the AdapterRef fields (path, sha256) and
    the ModelVersion fields (path, sha256, size) that name it, and its name in a bundle."""

    ref_fields: tuple[str, str]
    version_fields: tuple[str, str, str]
    bundle_name: str


STORED_FILES = {
    "adapter": StoredFile(
        ("adapter_path", "sha256"), ("adapter_path", "adapter_sha256", "adapter_size"),
        "adapter_model.safetensors",
    ),
    "lexical-head": StoredFile(  # beside a benign adapter
        ("lexical_head_path", "lexical_head_sha256"),
        ("lexical_head_path", "lexical_head_sha256", "lexical_head_size"),
        "lexical_head.safetensors",
    ),
}  # fmt: skip


@pytest.mark.parametrize("stored", STORED_FILES)
@pytest.mark.parametrize("case", HOSTILE_CASES, ids=CASE_IDS)
def test_serving_engine_refused(case, stored, canary, engine, benign_adapter, tmp_path):
    path = hostile_file(case, canary, tmp_path / "storage")
    path_field, sha_field = STORED_FILES[stored].ref_fields
    ref = dataclasses.replace(
        benign_adapter.ref,
        model_version_id=f"hostile-{stored}-{case.id}",
        **{path_field: str(path), sha_field: hashlib.sha256(path.read_bytes()).hexdigest()},
    )  # hashed honestly
    base = engine.base("tiny-causal", TEXT_GENERATION)
    before = set(base.adapters)
    with pytest.raises(AdapterUnavailable) as refused:
        engine.ensure_adapters(base, [ref])
    assert refused.value.code == "adapter_unavailable"
    assert f"[{case.expected}]" in str(refused.value)
    assert all(not adapter.lexical for adapter in base.adapters.values())
    if stored == "adapter":
        assert set(base.adapters) == before


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=CASE_IDS)
def test_adapter_folder_refused(case, canary, tiny_base, benign_adapter, tmp_path):
    from training_worker.ml.inference import load_adapter_model

    folder = tmp_path / "adapter"
    folder.mkdir()
    shutil.copy(benign_adapter.directory / "adapter_config.json", folder)
    if not case.build(canary)[0].endswith(".safetensors"):
        # Beside a good safetensors file, peft would still never read it; the folder is refused.
        shutil.copy(benign_adapter.directory / ST, folder)
    hostile_file(case, canary, folder)
    with pytest.raises(sw.UnsafeWeightsError) as refused:
        load_adapter_model(tiny_base, folder, TEXT_GENERATION)
    assert refused.value.code == case.expected


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=CASE_IDS)
def test_base_model_cache_refused(case, canary, tiny_base, tmp_path):
    from training_worker.ml.base_models import load_tokenizer_and_model

    cached = tmp_path / "cache" / "tiny-causal"
    shutil.copytree(tiny_base, cached, ignore=shutil.ignore_patterns("*.safetensors"))
    name, content = case.build(canary)
    if name == ST:
        name = "model.safetensors"
    else:  # a pickle-format file beside genuine weights still refuses the folder
        shutil.copy(tiny_base / "model.safetensors", cached)
    (cached / name).write_bytes(content)
    with pytest.raises(BaseModelUnavailable) as refused:
        load_tokenizer_and_model(cached, None, TEXT_GENERATION)
    assert f"[{case.expected}]" in refused.value.message


@pytest.mark.django_db
@pytest.mark.parametrize("stored", STORED_FILES)
@pytest.mark.parametrize("case", HOSTILE_CASES, ids=CASE_IDS)
def test_export_bundle_refused(case, stored, canary, alice, api, tmp_path):
    from billing.models import ExportDownload
    from tests.billing.test_export_bundle import stored_version
    from training_worker import artifacts

    version = stored_version(alice, tmp_path)
    path = hostile_file(case, canary, tmp_path / "upload")
    stored_as = artifacts.store_content_addressed(path)  # (name, sha256, size)
    for field, value in zip(STORED_FILES[stored].version_fields, stored_as, strict=True):
        setattr(version, field, value)
    version.save()
    response = api(alice).get(f"/api/v1/models/{version.id}/export")
    assert response.status_code == 409, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "adapter_file_refused"
    assert error["fields"] == {STORED_FILES[stored].bundle_name: [case.expected]}
    assert not ExportDownload.objects.filter(model_version=version).exists()


# --- benign files load at every point


def test_benign_peft_adapter_passes_the_validator(benign_adapter):
    header = sw.validate_safetensors_file(benign_adapter.directory / ST)
    assert header.tensors and all(t.dtype == "F32" for t in header.tensors)
    checked = sw.checked_weights_headers(benign_adapter.directory)
    assert list(checked) == [benign_adapter.directory / ST]


def test_benign_peft_adapter_loads_in_the_serving_engine(engine, benign_adapter):
    base = engine.base("tiny-causal", TEXT_GENERATION)
    engine.ensure_adapters(base, [benign_adapter.ref])
    assert any(a.sha256 == benign_adapter.ref.sha256 for a in base.adapters.values())


def test_benign_peft_adapter_loads_from_its_folder(tiny_base, benign_adapter):
    from training_worker.ml.inference import load_adapter_model

    model, _ = load_adapter_model(tiny_base, benign_adapter.directory, TEXT_GENERATION)
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_benign_base_model_loads_from_the_cache(tiny_base):
    from training_worker.ml.base_models import load_tokenizer_and_model

    _, model = load_tokenizer_and_model(tiny_base, None, TEXT_GENERATION)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_benign_empty_and_metadata_files_pass():
    assert sw.validate_safetensors_bytes(safetensors_bytes({})).tensors == ()
    header = sw.validate_safetensors_bytes(safetensors_bytes(metadata={"format": "pt"}))
    assert header.metadata == {"format": "pt"}


@pytest.mark.django_db
def test_benign_export_bundle_downloads(alice, api, tmp_path):
    from tests.billing.test_export_bundle import stored_version

    version = stored_version(alice, tmp_path)
    response = api(alice).get(f"/api/v1/models/{version.id}/export")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:2] == b"PK"


def test_every_hostile_case_is_also_a_case_the_families_table_counts():
    families = {case.family for case in HOSTILE_CASES}
    assert families == {
        "pickle", "wrapped-pickle", "pickle-file-type", "truncated", "polyglot",
        "header-size", "offsets", "dtype-shape", "header",
    }  # fmt: skip
    assert len(set(CASE_IDS)) == len(CASE_IDS)
    assert set(case.expected for case in HOSTILE_CASES) <= set(sw.REFUSAL_CODES)
