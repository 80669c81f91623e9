"""A mixed batch answers each row exactly as that row's adapter alone, and as peft does."""

import pytest
import torch
from peft import PeftModel

from serving.engine.runner import (
    ClassificationRow,
    GenerationRow,
    classify_rows,
    generate_rows,
)
from serving.protocol import TEXT_CLASSIFICATION, TEXT_GENERATION, GenerationParameters
from tests.serving.conftest import LABELS, plain_base

TEXTS = [
    "I was charged twice this month",
    "the app crashes when I open settings",
    "thank you, the new release is lovely",
    "refund please",
    "error 500 on login since yesterday morning, please help",
    "great support team",
]
PROMPTS = ["add 2 and 3:", "Hello world! How", "The quick brown fox", "Question: what is"]
# float32: the gathered product sums in another order than peft's, so not bit for bit.
ATOL = 1e-5


def peft_reference(base_sources, slug, task, adapters, labels=None):
    _, model = plain_base(base_sources, slug, task, labels)
    peft_model = PeftModel.from_pretrained(model, adapters[0].directory, adapter_name="a0")
    for i, adapter in enumerate(adapters[1:], start=1):
        peft_model.load_adapter(adapter.directory, adapter_name=f"a{i}")
    return peft_model.eval()


@pytest.mark.parametrize(
    "picks",
    [[0, 1, 2, 3, 1, 0], [2, 2, 2, 2, 2, 2]],
    ids=["mixed", "one-adapter"],  # one adapter: two plain products, no per-row gather
)
def test_mixed_classification_batch_equals_peft_adapter_names_per_row(
    registry, base_sources, classification_adapters, picks
):
    # Given four minilm specialists loaded in the engine, and the same four in peft
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    registry.ensure_adapters(base, [a.ref for a in classification_adapters])
    reference = peft_reference(
        base_sources, "minilm-l6", TEXT_CLASSIFICATION, classification_adapters, LABELS
    )

    # When one batch runs through the gathered LoRA forward
    rows = [
        ClassificationRow(text=t, adapter=classification_adapters[p].ref)
        for t, p in zip(TEXTS, picks, strict=True)
    ]
    ours = torch.tensor(
        [[scores[label] for label in LABELS] for scores in classify_rows(base, rows)]
    )

    # Then every row equals peft's adapter_names= output for that row's adapter
    encoded = base.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = reference(**encoded, adapter_names=[f"a{p}" for p in picks]).logits
    expected = torch.softmax(logits, dim=-1)
    for row in range(len(TEXTS)):
        torch.testing.assert_close(ours[row], expected[row], atol=ATOL, rtol=1e-4)
    # and the adapters really differ (the test would pass trivially otherwise)
    base_only = torch.softmax(
        plain_base(base_sources, "minilm-l6", TEXT_CLASSIFICATION, LABELS)[1](**encoded).logits,
        dim=-1,
    )
    assert not torch.allclose(expected, base_only, atol=1e-3)


def test_mixed_classification_batch_equals_each_adapter_alone(registry, classification_adapters):
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    registry.ensure_adapters(base, [a.ref for a in classification_adapters])
    picks = [3, 2, 1, 0, 3, 2]
    mixed = classify_rows(
        base,
        [
            ClassificationRow(text=t, adapter=classification_adapters[p].ref)
            for t, p in zip(TEXTS, picks, strict=True)
        ],
    )
    for text, pick, scores in zip(TEXTS, picks, mixed, strict=True):
        alone = classify_rows(
            base, [ClassificationRow(text=text, adapter=classification_adapters[pick].ref)]
        )[0]
        for label in LABELS:
            assert abs(alone[label] - scores[label]) < ATOL


def test_mixed_generation_batch_equals_peft_adapter_names_per_row(
    registry, base_sources, generation_adapters
):
    # Given three tiny-causal adapters of different ranks in the engine and in peft
    base = registry.base("tiny-causal", TEXT_GENERATION)
    refs = [a.ref for a in generation_adapters]
    registry.ensure_adapters(base, refs)
    reference = peft_reference(base_sources, "tiny-causal", TEXT_GENERATION, generation_adapters)
    picks = [0, 1, 2, None]  # the last row asks for the bare base
    names = [f"a{p}" if p is not None else "__base__" for p in picks]

    # Then the prompt logits of every row equal peft's adapter_names= logits
    tokenizer = base.tokenizer
    tokenizer.padding_side = "left"
    encoded = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    from serving.engine.runner import _backbone, _lora_context

    with torch.inference_mode():
        expected = reference(**encoded, adapter_names=names).logits
        with _lora_context(base, [refs[p] if p is not None else None for p in picks]):
            ours = _backbone(base)(**encoded).logits
    mask = encoded["attention_mask"].bool()
    for row in range(len(PROMPTS)):
        torch.testing.assert_close(
            ours[row][mask[row]], expected[row][mask[row]], atol=ATOL, rtol=1e-4
        )

    # And greedy generation gives peft's tokens row by row
    params = GenerationParameters(max_new_tokens=12, temperature=0.0)
    results = generate_rows(
        base,
        [
            GenerationRow(prompt=p, adapter=refs[k] if k is not None else None, parameters=params)
            for p, k in zip(PROMPTS, picks, strict=True)
        ],
    )
    with torch.inference_mode():
        generated = reference.generate(
            **encoded,
            adapter_names=names,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    width = encoded["input_ids"].shape[1]
    for row, result in enumerate(results):
        tokens = generated[row, width:].tolist()
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        assert result.token_ids == tokens
    assert len({tuple(r.token_ids) for r in results}) > 1


def test_generation_rows_finish_on_their_own_limits_and_cancel(registry, generation_adapters):
    base = registry.base("tiny-causal", TEXT_GENERATION)
    refs = [a.ref for a in generation_adapters]
    registry.ensure_adapters(base, refs)
    streamed: dict[int, list[str]] = {0: [], 1: [], 2: []}
    rows = [
        GenerationRow(
            prompt=PROMPTS[i],
            adapter=refs[i],
            parameters=GenerationParameters(max_new_tokens=n),
            on_text=streamed[i].append,
        )
        for i, n in enumerate([3, 20, 20])
    ]
    steps = {"n": 0}

    def cancelled(live):
        steps["n"] += 1
        return {2} if steps["n"] >= 5 else set()

    results = generate_rows(base, rows, cancelled=cancelled)
    assert results[0].finish_reason in ("length", "stop") and results[0].completion_tokens <= 3
    assert results[2].finish_reason == "cancelled" and results[2].completion_tokens <= 6
    assert (
        results[1].completion_tokens > results[2].completion_tokens
        or results[1].finish_reason == "stop"
    )
    for i, result in enumerate(results):
        assert "".join(streamed[i]) == result.text

    # The row of the long request equals that request run alone (rows left the batch)
    alone = generate_rows(base, [rows[1]])[0]
    assert alone.token_ids == results[1].token_ids
