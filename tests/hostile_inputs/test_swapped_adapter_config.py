"""An adapter's config says how its weights are applied: ``lora_alpha`` scales every LoRA
product, ``target_modules`` says where they go. mallory, who can write to storage, swaps a
version's ``adapter_config.json`` (the weights untouched) to make a specialist answer
differently. Every reader checks the config's bytes against the SHA-256 its version row
recorded, as it checks the weights: the serving engine, the export bundle and ``load.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from pathlib import Path

import pytest
import torch

from serving.engine.registry import AdapterIntegrityError, ModelRegistry, adapter_name_for
from serving.engine.service import Engine
from serving.engine.synthetic import BuiltAdapter, build_adapter, read_local_bytes
from serving.protocol import TEXT_GENERATION, GenerationParameters, InferenceRequest

SWAPPED_ALPHA = 512  # the genuine adapters were saved with lora_alpha = 2 * rank


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from training_worker.ml.base_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-base"), seed=0)


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory) -> list[BuiltAdapter]:
    """Two real peft ``save_pretrained`` LoRA adapters on the tiny causal LM."""
    from training_worker.ml.base_models import load_tokenizer_and_model

    _, model = load_tokenizer_and_model(tiny_base, None, TEXT_GENERATION)
    root = tmp_path_factory.mktemp("adapters")
    return [
        build_adapter(model, TEXT_GENERATION, root / f"a{seed}", seed=seed, rank=8)
        for seed in (11, 12)
    ]


def new_registry(tiny_base) -> ModelRegistry:
    return ModelRegistry(
        resolve_base={"tiny-causal": str(tiny_base)}.__getitem__,
        read_bytes=read_local_bytes,
        cache_bytes=64 * 2**20,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def swapped_config(adapter: BuiltAdapter, folder: Path, **changes) -> Path:
    """mallory's copy of the adapter's config: the same JSON with ``changes`` applied."""
    config = json.loads((adapter.directory / "adapter_config.json").read_text())
    assert config["lora_alpha"] == 16 and config["r"] == 8
    config.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(config))
    return path


def scaling(registry: ModelRegistry, ref) -> float:
    """The factor the engine applies to this adapter's LoRA products (alpha / r)."""
    base = registry.base("tiny-causal", TEXT_GENERATION)
    name = adapter_name_for(ref.sha256)
    layer = base.model.get_base_model().model.layers[0].self_attn.q_proj
    return float(layer.scaling[name])


def test_a_config_with_a_swapped_lora_alpha_and_the_same_weights_is_refused_by_the_engine(
    tiny_base, adapters, tmp_path, caplog
):
    # Given the version's genuine adapter, and mallory's config beside the same weights:
    # the row still names the genuine config's SHA-256
    genuine = adapters[0].ref
    swapped = swapped_config(adapters[0], tmp_path / "storage", lora_alpha=SWAPPED_ALPHA)
    tampered = dataclasses.replace(genuine, config_path=str(swapped))
    registry = new_registry(tiny_base)
    base = registry.base("tiny-causal", TEXT_GENERATION)

    # When the engine is asked to serve it, it refuses before applying anything, and logs it
    with caplog.at_level(logging.ERROR), pytest.raises(AdapterIntegrityError) as refused:
        registry.ensure_adapters(base, [tampered])
    assert refused.value.code == "adapter_integrity"
    assert "adapter config does not match the version's SHA-256" in str(refused.value)
    assert "adapter config integrity failure" in caplog.text
    assert genuine.model_version_id in caplog.text
    assert base.adapters == {} and base.peft_model is None

    # The genuine config still loads, at its own scaling (alpha 16 / r 8)
    registry.ensure_adapters(base, [genuine])
    assert scaling(registry, genuine) == 2.0


def test_the_swap_would_have_changed_the_answers(tiny_base, adapters, tmp_path):
    """Why the check matters: hashed honestly (a row that names mallory's config), the same
    weights load at another scaling, and the engine then answers another text. A version
    that names the genuine config again gets the genuine scaling back, not the cached one."""
    from serving.engine.runner import GenerationRow, generate_rows

    genuine = adapters[0].ref
    swapped = swapped_config(adapters[0], tmp_path / "storage", lora_alpha=SWAPPED_ALPHA)
    named = dataclasses.replace(
        genuine,
        config_path=str(swapped),
        config_sha256=hashlib.sha256(swapped.read_bytes()).hexdigest(),
    )
    registry = new_registry(tiny_base)
    base = registry.base("tiny-causal", TEXT_GENERATION)
    parameters = GenerationParameters(max_new_tokens=12)

    def answer(ref) -> str:
        registry.ensure_adapters(base, [ref])
        row = GenerationRow("The quick brown", ref, parameters, stop_at_eos=False)
        return generate_rows(base, [row])[0].text

    genuine_text = answer(genuine)
    assert scaling(registry, genuine) == 2.0
    swapped_text = answer(named)
    assert scaling(registry, named) == SWAPPED_ALPHA / 8
    assert swapped_text != genuine_text
    assert answer(genuine) == genuine_text and scaling(registry, genuine) == 2.0


def test_a_ref_that_names_no_config_sha256_is_refused(tiny_base, adapters):
    registry = new_registry(tiny_base)
    base = registry.base("tiny-causal", TEXT_GENERATION)
    with pytest.raises(AdapterIntegrityError, match="names no SHA-256 for its adapter config"):
        registry.ensure_adapters(base, [dataclasses.replace(adapters[0].ref, config_sha256="")])
    assert base.adapters == {}


def test_a_swapped_config_fails_only_its_own_request_in_a_shared_batch(
    tiny_base, adapters, tmp_path
):
    engine = Engine(registry=new_registry(tiny_base), redis=None, max_size=8, max_wait_ms=200)
    swapped = swapped_config(adapters[1], tmp_path / "storage", target_modules=["q_proj"])
    tampered = dataclasses.replace(adapters[1].ref, config_path=str(swapped))

    def request(ref) -> dict:
        return InferenceRequest(
            request_id=str(uuid.uuid4()), task=TEXT_GENERATION, base_model="tiny-causal",
            adapter=ref, prompt="Hello", parameters=GenerationParameters(max_new_tokens=4),
        ).to_dict()  # fmt: skip

    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            good, bad = pool.map(
                lambda r: engine.infer(r, timeout=60), [request(adapters[0].ref), request(tampered)]
            )
    finally:
        engine.stop()
    assert "error" not in good and good["adapter_sha256"] == adapters[0].ref.sha256
    assert bad["error"]["code"] == "adapter_integrity"


@pytest.mark.django_db
def test_a_stored_config_swapped_after_the_version_was_written_stops_the_export(
    alice, api, tmp_path
):
    from django.core.files.storage import default_storage

    from billing.export_bundle import BundleIntegrityError
    from tests.billing.test_export_bundle import stored_version

    version = stored_version(alice, tmp_path)
    stored = Path(default_storage.path(version.config_path))
    stored.write_text(json.dumps({"r": 8, "lora_alpha": SWAPPED_ALPHA}))

    response = api(alice, scopes=["read"]).get(f"/api/v1/models/{version.id}/export")
    assert response.status_code == 200  # the zip streams; it stops at the swapped file
    with pytest.raises(BundleIntegrityError, match="does not match its recorded SHA-256"):
        b"".join(response.streaming_content)


@pytest.mark.django_db
def test_load_py_refuses_a_bundle_whose_config_was_edited(alice, api, tmp_path):
    from billing.bundle_loader import load as bundle_load
    from tests.billing.test_export_bundle import stored_version, unpack

    version = stored_version(alice, tmp_path)
    response = api(alice, scopes=["read"]).get(f"/api/v1/models/{version.id}/export")
    folder = unpack(b"".join(response.streaming_content), tmp_path / "bundle")
    assert bundle_load.verify_bundle(folder)["model_version"] == str(version.id)

    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": SWAPPED_ALPHA}))
    with pytest.raises(bundle_load.BundleError, match=r"adapter_config\.json does not match"):
        bundle_load.verify_bundle(folder)
