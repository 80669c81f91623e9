"""Training, evaluation and serving put the same prompt before a generation row's completion:
the base's chat template when it has one, the plain prompt otherwise."""

import json

import pytest
from transformers import AutoTokenizer

from serving.engine.runner import (
    GenerationRow,
    encode_prompt,
    generate_rows,
    render_chat,
    render_prompt,
)
from serving.protocol import TEXT_GENERATION, GenerationParameters
from tests.serving.conftest import new_registry
from training_worker.ml.base_models import build_tiny_causal_lm
from training_worker.ml.data import IGNORE_INDEX, encode_generation
from training_worker.ml.dataset_validation import validate_dataset
from training_worker.ml.evaluation import greedy_completions

# The ChatML layout SmolLM2-Instruct's tokenizer uses.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROW = {"prompt": "add 2 and 3:", "completion": " 5"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    plain = build_tiny_causal_lm(tmp_path_factory.mktemp("plain-causal"), seed=0)
    chat = build_tiny_causal_lm(tmp_path_factory.mktemp("chat-causal"), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(chat)
    return {"plain": str(plain), "chat": str(chat)}


@pytest.mark.parametrize("slug", ["chat", "plain"])
def test_training_evaluation_and_serving_agree_on_one_row(sources, slug):
    base = new_registry(sources).base(slug, TEXT_GENERATION)
    tokenizer = base.tokenizer

    # Training: the ids before the completion (the positions the loss ignores)
    example = encode_generation(tokenizer, [ROW["prompt"]], [ROW["completion"]])[0]
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True)
               if label == IGNORE_INDEX]  # fmt: skip

    # Serving: /predict and /v1/completions send the row's prompt, chat one user message
    served = render_prompt(base, ROW["prompt"])
    assert encode_prompt(base, served) == trained
    if slug == "chat":
        assert served == f"<|im_start|>user\n{ROW['prompt']}<|im_end|>\n<|im_start|>assistant\n"
        assert render_chat(base, [{"role": "user", "content": ROW["prompt"]}]) == served
        assert trained.count(tokenizer.bos_token_id) == 0  # the template adds no BOS here
    else:
        assert served == ROW["prompt"]
        assert trained == tokenizer(ROW["prompt"])["input_ids"]  # as before: text as is

    # Evaluation and the engine generate the same greedy text from that prompt
    evaluated = greedy_completions(base.model, tokenizer, [ROW["prompt"]], 6, "cpu")[0]
    engine = generate_rows(
        base, [GenerationRow(served, None, GenerationParameters(max_new_tokens=6))]
    )[0]
    assert evaluated == engine.text.strip()


@pytest.mark.parametrize("slug", ["chat", "plain"])
def test_an_uploaded_chat_row_trains_on_what_a_chat_request_is_served_with(sources, slug):
    # Given a chat upload, stored as a transcript prompt and the last assistant reply
    messages = [
        {"role": "system", "content": "You are a tax adviser."},
        {"role": "user", "content": "Is VAT due?"},
        {"role": "assistant", "content": "Which country?"},
        {"role": "user", "content": "France,\nfor a sale."},
    ]
    upload = json.dumps({"messages": [*messages, {"role": "assistant", "content": "Yes, 20%."}]})
    (row,) = validate_dataset((upload + "\n").encode(), filename="chat.jsonl").rows
    base = new_registry(sources).base(slug, TEXT_GENERATION)

    # When training encodes it and the engine renders the same messages as a chat request
    example = encode_generation(base.tokenizer, [row["prompt"]], [row["completion"]])[0]
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True)
               if label == IGNORE_INDEX]  # fmt: skip
    served = render_chat(base, messages)

    # Then the model sees the same tokens before the reply
    assert encode_prompt(base, served) == trained
    if slug == "chat":
        assert served.count("<|im_start|>") == 5 and "France,\nfor a sale." in served
