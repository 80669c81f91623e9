"""The bundle's load.py, in this process: it needs nothing of Niche, reads what the platform
writes, refuses what it cannot read, and reproduces what the serving engine computes.

tests/billing/test_bundle_loader_fresh_venv.py runs the same file as a buyer does, in a
virtual environment of PyPI packages only, against the gateway's answers.
"""

import ast
import base64
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from billing import export_bundle
from billing.bundle_loader import LOADER_PATH
from billing.bundle_loader import load as bundle_load
from serving import gateway
from serving.engine.registry import ModelRegistry
from serving.engine.runner import (
    CLASSIFICATION_MAX_TOKENS,
    ClassificationRow,
    GenerationRow,
    classify_rows,
    generate_rows,
    render_prompt,
)
from serving.protocol import TEXT_CLASSIFICATION, TEXT_GENERATION, GenerationParameters
from tests.billing.bundle_versions import (
    LABELS,
    base_source,
    exported,
    lexical_head_bytes,
    real_version,
)
from tests.training_worker.conftest import tiny_causal_built  # noqa: F401  fixture
from training_worker import artifacts
from training_worker.ml import lexical_head, pooling, prompts

ML_STACK = {"torch", "transformers", "peft", "sklearn", "safetensors", "numpy", "cryptography"}
TEXTS = [
    "I was charged twice for one invoice, please refund the payment",
    "the app crashes when I open the settings page",
    "thank you, lovely support team",
    # longer than the version's 16 tokens: served cut, so load.py must cut it the same way
    "my invoice shows a refund I never asked for and the card was charged again today "
    "although support promised the payment would be reversed by Friday",
]


def engine_registry() -> ModelRegistry:
    return ModelRegistry(
        resolve_base=base_source,
        read_bytes=artifacts.read_bytes,
        cache_bytes=256 * 2**20,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def public_key_document(client) -> dict:
    response = client.get("/.well-known/niche-signing-key")
    assert response.status_code == 200
    return response.json()


# --- what load.py is made of


def test_load_py_imports_only_the_standard_library_and_the_ml_stack():
    tree = ast.parse(LOADER_PATH.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) <= ML_STACK, imported
    assert "__future__" in imported  # the walk sees its imports at all


def test_load_py_agrees_with_the_platform_on_every_shared_constant():
    assert bundle_load.BUNDLE_FORMAT == export_bundle.BUNDLE_FORMAT
    assert (bundle_load.MANIFEST, bundle_load.SIGNATURE) == (
        export_bundle.MANIFEST, export_bundle.SIGNATURE,
    )  # fmt: skip
    assert bundle_load.DEFAULT_MAX_TOKENS == CLASSIFICATION_MAX_TOKENS
    assert export_bundle.SERVED_MAX_TOKENS_DEFAULT == CLASSIFICATION_MAX_TOKENS
    assert GenerationParameters.max_new_tokens == bundle_load.DEFAULT_MAX_NEW_TOKENS
    assert bundle_load.MEAN_HEAD_KEY_PREFIX == pooling.MEAN_HEAD_KEY_PREFIX
    assert bundle_load.LEXICAL_HEAD == lexical_head.FILENAME
    assert bundle_load.LEXICAL_FORMAT == lexical_head.FORMAT
    assert bundle_load.LEXICAL_ANALYZERS == lexical_head.ANALYZERS
    assert bundle_load.LEXICAL_TOKEN_PATTERN == lexical_head.DEFAULT_TOKEN_PATTERN


# --- the lexical head


def test_load_py_reads_the_lexical_head_the_platform_writes_today(tmp_path):
    path = tmp_path / lexical_head.FILENAME
    path.write_bytes(lexical_head_bytes(0.35))
    head = lexical_head.LexicalHead.from_bytes(path.read_bytes())

    theirs = bundle_load.read_lexical_head(path)

    # The format version this platform writes is one load.py reads (a new one fails here
    # until load.py learns it), and it computes the platform's probabilities.
    assert str(lexical_head.FORMAT_VERSION) in bundle_load.LEXICAL_FORMAT_VERSIONS
    assert theirs.weight == head.weight and theirs.n_labels == len(LABELS)
    platform = lexical_head.LexicalHead.from_bytes(path.read_bytes()).predict_proba(TEXTS)
    np.testing.assert_allclose(theirs.predict_proba(TEXTS), platform, rtol=0, atol=1e-12)
    assert not np.allclose(platform, 1 / len(LABELS))  # the head does say something


def test_a_lexical_head_of_an_unknown_format_version_fails_clearly(tmp_path):
    from safetensors.numpy import load, save

    payload = lexical_head_bytes(0.35)
    header_length = int.from_bytes(payload[:8], "little")
    metadata = json.loads(payload[8 : 8 + header_length])["__metadata__"]
    path = tmp_path / lexical_head.FILENAME
    path.write_bytes(save(load(payload), metadata=metadata | {"format_version": "99"}))

    with pytest.raises(bundle_load.BundleError) as refused:
        bundle_load.read_lexical_head(path)

    assert "FORMAT_VERSION '99'" in str(refused.value)
    assert f"reads {', '.join(bundle_load.LEXICAL_FORMAT_VERSIONS)}" in str(refused.value)


# --- prompts


@pytest.mark.usefixtures("tiny_causal_built")
def test_load_py_renders_prompts_as_training_and_serving_do():
    from django.conf import settings
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(settings.MODEL_CACHE_DIR / "tiny-causal")
    templated = AutoTokenizer.from_pretrained(settings.MODEL_CACHE_DIR / "tiny-causal")
    templated.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    cases = ["add 3 and 4:", "system: be brief\nuser: hello\nassistant:", "user: not\nquite"]
    for tokenizer in (plain, templated):
        for prompt in cases:
            ours = prompts.render_prompt(tokenizer, prompt)
            assert bundle_load.render_prompt(tokenizer, prompt) == ours
            assert bundle_load.encode_rendered(tokenizer, [ours]) == prompts.encode_rendered(
                tokenizer, [ours]
            )
    assert bundle_load.render_prompt(templated, cases[1]).count("<|") == 3  # parsed as a chat


# --- the whole bundle, against the engine


def test_load_py_gives_the_engines_probabilities_for_a_blended_classifier(alice, api, tmp_path):
    # Given alice's classifier: a mean-pooling adapter blended with a lexical head at 0.4,
    # served cut to 16 tokens
    version = real_version(
        alice, task=TEXT_CLASSIFICATION, folder=tmp_path, lexical_weight=0.4, max_seq_length=16
    )
    folder = exported(api(alice, scopes=["read"]), version, tmp_path / "bundle")

    # Then base_model.json says what serving does and how to run it
    document = json.loads((folder / "base_model.json").read_text())
    assert document["classification_head"] == "mean"  # from the adapter's tensors
    assert document["max_seq_length"] == 16
    assert document["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert document["loader"] == "load.py"
    assert 'python load.py --base <folder> "text"' in document["how_to_load"]
    assert "`config` = the encoder's config" in document["how_to_load"]
    assert (folder / "load.py").read_bytes() == LOADER_PATH.read_bytes()

    # When load.py loads it (in this process) and the engine serves the same texts
    bundle = bundle_load.load_bundle(folder, base=base_source("minilm-l6"))
    ours = bundle.predict(TEXTS)
    _, slug, ref = gateway._served_version(version.pk)
    registry = engine_registry()
    base = registry.base(slug, TEXT_CLASSIFICATION, registry.adapter_head(ref))
    registry.ensure_adapters(base, [ref])
    served = classify_rows(base, [ClassificationRow(text=text, adapter=ref) for text in TEXTS])

    # Then every label's probability is the served one
    got = np.array([[row["scores"][label] for label in LABELS] for row in ours])
    want = np.array([[row[label] for label in LABELS] for row in served])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert [row["label"] for row in ours] == [max(row, key=row.get) for row in served]
    # the blend is in it: the adapter alone answers otherwise
    alone = bundle.model(**bundle.tokenizer(TEXTS, padding=True, truncation=True,
                                            max_length=16, return_tensors="pt")).logits  # fmt: skip
    assert not np.allclose(torch.softmax(alone, -1).detach().numpy(), want, atol=1e-3)


@pytest.mark.usefixtures("tiny_causal_built")
def test_load_py_generates_the_engines_greedy_text(alice, api, tmp_path):
    version = real_version(alice, task=TEXT_GENERATION, folder=tmp_path)
    folder = exported(api(alice, scopes=["read"]), version, tmp_path / "bundle")
    document = json.loads((folder / "base_model.json").read_text())
    assert "AutoModelForCausalLM" in document["how_to_load"]
    assert "max_seq_length" not in document and "classification_head" not in document

    # tiny-causal has no Hub id: the base must be named, and a wrong name says so
    with pytest.raises(bundle_load.BundleError, match="Name the base model with --base"):
        bundle_load.load_bundle(folder)
    with pytest.raises(bundle_load.BundleError, match="Cannot load the base model"):
        bundle_load.load_bundle(folder, base=str(tmp_path / "no-such-folder"))

    bundle = bundle_load.load_bundle(folder, base=base_source("tiny-causal"))
    _, slug, ref = gateway._served_version(version.pk)
    registry = engine_registry()
    base = registry.base(slug, TEXT_GENERATION)
    registry.ensure_adapters(base, [ref])
    prompts_ = ["add 3 and 4:", "The patient reports", "Translate to French: good morning ->"]
    parameters = GenerationParameters(max_new_tokens=12)
    served = generate_rows(
        base, [GenerationRow(render_prompt(base, p), ref, parameters) for p in prompts_]
    )

    for prompt, answer in zip(prompts_, served, strict=True):
        ours = bundle.generate(prompt, max_new_tokens=12)
        assert (ours["generated_text"], ours["finish_reason"]) == (
            answer.text, answer.finish_reason,
        )  # fmt: skip
        assert ours["completion_tokens"] == answer.completion_tokens
    longest = max(served, key=lambda answer: len(answer.text))
    assert len(longest.text) >= 4  # something was generated at all

    # A stop string inside that text cuts both at the same place
    prompt, stop = prompts_[served.index(longest)], longest.text[2:4]
    stopped = GenerationParameters(max_new_tokens=12, stop=[stop])
    [answer] = generate_rows(base, [GenerationRow(render_prompt(base, prompt), ref, stopped)])
    ours = bundle.generate(prompt, max_new_tokens=12, stop=[stop])
    assert (ours["generated_text"], ours["finish_reason"]) == (answer.text, "stop")
    assert stop not in ours["generated_text"]


# --- checks before anything loads


def test_load_py_refuses_a_tampered_file_a_foreign_key_and_a_pickle(alice, api, tmp_path):
    version = real_version(alice, task=TEXT_CLASSIFICATION, folder=tmp_path, lexical_weight=0.5)
    folder = exported(api(alice, scopes=["read"]), version, tmp_path / "bundle")
    key_file = tmp_path / "niche-signing-key.json"
    key_file.write_text(json.dumps(public_key_document(api())))
    pem_file = tmp_path / "niche.pem"
    pem_file.write_text(public_key_document(api())["public_key_pem"])

    # As downloaded, it verifies with the platform's key, as JSON or as PEM
    assert bundle_load.verify_bundle(folder, key_file)["model_version"] == str(version.id)
    assert bundle_load.verify_bundle(folder, pem_file)["model_version"] == str(version.id)

    # Signed by another key: refused
    other = Ed25519PrivateKey.generate().public_key()
    other_file = tmp_path / "other.json"
    raw = other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    other_file.write_text(json.dumps({"public_key": base64.b64encode(raw).decode()}))
    with pytest.raises(bundle_load.BundleError, match="does not verify"):
        bundle_load.verify_bundle(folder, other_file)

    # A head whose bytes changed: refused by its hash, before anything parses it
    head = folder / "lexical_head.safetensors"
    original = head.read_bytes()
    head.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(bundle_load.BundleError, match=r"lexical_head\.safetensors does not match"):
        bundle_load.load_bundle(folder, base=base_source("minilm-l6"))
    head.write_bytes(original)

    # A pickled adapter beside the safetensors one (peft could read it): refused
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(bundle_load.BundleError, match="pickle"):
        bundle_load.verify_bundle(folder)
    (folder / "adapter_model.bin").unlink()

    # On the command line the refusal is a message and exit status 2
    (folder / "LICENSE.txt").write_text("Commercial use: allowed\n")
    assert bundle_load.main(["--bundle", str(folder), "--base", "x", "hello"]) == 2


def test_the_manifest_lists_load_py_with_its_hash(alice, api, tmp_path):
    version = real_version(alice, task=TEXT_CLASSIFICATION, folder=tmp_path)
    folder = exported(api(alice, scopes=["read"]), version, tmp_path / "bundle")
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    entry = next(e for e in manifest["files"] if e["name"] == "load.py")
    assert entry["sha256"] == hashlib.sha256(LOADER_PATH.read_bytes()).hexdigest()
    assert entry["size"] == len(LOADER_PATH.read_bytes())
    assert Path(folder / "load.py").read_text().startswith("#!/usr/bin/env python3")
