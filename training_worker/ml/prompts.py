"""The one prompt format shared by training, evaluation and serving of generation models.

A base whose tokenizer has a chat template (SmolLM2-Instruct) sees every prompt as one user
turn (or, for an uploaded chat row, its messages) followed by the assistant header, exactly
as the template renders it; the completion follows. A base without one (tiny-causal) sees
the prompt text as it is, and a chat as a ``role: content`` transcript. Training
(``data.encode_generation``), evaluation (``evaluation.greedy_completions``) and the serving
engine (``serving.engine``) all call these functions, so an adapter is served on the very
format it was trained on, and the evaluation and the engine read the same prompt tokens
(``prompt_budget``). No Django imports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

DEFAULT_CONTEXT_TOKENS = 2048  # for a model config that names no max_position_embeddings


def context_limit(config: Any) -> int:
    """Positions a generation model reads, its prompt and its new tokens together."""
    return int(getattr(config, "max_position_embeddings", None) or DEFAULT_CONTEXT_TOKENS)


def prompt_budget(limit: int, max_new_tokens: int) -> int:
    """Prompt tokens a model reads before writing ``max_new_tokens`` within its context
    ``limit`` (``context_limit``). The serving engine never cuts a prompt: it reads it whole
    or refuses it (``input_too_long``: longer than this budget, or than the base's prompt
    limit). The sealed-split evaluation reads every prompt within the budget whole too
    (never cut to the run's max_seq_length), so what is served on a sealed row is what was
    scored; only a prompt that no call could send is cut by the evaluation, which must
    score every row: to its last tokens, where the question and the assistant's header are.
    """
    return max(limit - max_new_tokens, 0)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


TRANSCRIPT_ROLES = ("system", "user", "assistant")
_ROLE_AT_LINE_START = re.compile(rf"^({'|'.join(TRANSCRIPT_ROLES)}): ", re.MULTILINE)
_ASSISTANT_CUE = "assistant:"


def transcript(messages: Sequence[dict[str, str]]) -> str:
    """``role: content`` lines ending in ``assistant:``: how an uploaded chat row's prompt
    is stored (``dataset_validation``) and how a base without a chat template sees a chat."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, _ASSISTANT_CUE])


def parse_transcript(prompt: str) -> list[dict[str, str]] | None:
    """The messages of a prompt written by ``transcript`` (roles system/user/assistant),
    or None when the prompt is not such a transcript."""
    if not prompt.endswith("\n" + _ASSISTANT_CUE):
        return None
    body = prompt[: -len(_ASSISTANT_CUE)]  # ends with the newline that joined the lines
    starts = list(_ROLE_AT_LINE_START.finditer(body))
    if not starts or starts[0].start() != 0:
        return None
    messages = []
    for match, following in zip(starts, [*starts[1:], None], strict=True):
        end = following.start() if following else len(body)
        messages.append({"role": match.group(1), "content": body[match.end() : end - 1]})
    return messages


_SENTINEL = "\u2063niche\u2063"


def injects_default_system(tokenizer: Any) -> bool:
    """Whether the chat template writes a system turn of its own when a conversation has
    none (SmolLM2-Instruct: "You are a helpful AI assistant named SmolLM, ..."). Read once
    per tokenizer from how it renders one user turn."""
    cached = getattr(tokenizer, "_niche_injects_default_system", None)
    if cached is None:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        cached = "system" in rendered.split(_SENTINEL)[0]
        tokenizer._niche_injects_default_system = cached
    return cached


def render_messages(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """Text of a conversation up to the assistant's turn: the chat template with its
    generation prompt, or the ``transcript`` when the base has no template.

    A conversation without a system message gets an EMPTY system turn where the template
    would write a default one: SmolLM2's default is 17 tokens of identity ("You are a
    helpful AI assistant named SmolLM, ...") before every row, nearly half the tokens of
    a short training row. Measured (bench/results/generation_recipe.json, "system_turn"):
    the base model prompted zero-shot and few-shot scores no worse without it (past tense
    few-shot exact match 0.20 vs 0.13 with it on 100 validation rows, ARPAbet 0.00 both),
    and training reads 1.65x fewer tokens per short row, so more epochs fit in the same
    minutes."""
    if has_chat_template(tokenizer):
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        if (not turns or turns[0]["role"] != "system") and injects_default_system(tokenizer):
            turns = [{"role": "system", "content": ""}, *turns]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return transcript(messages)


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """Text the model sees before the completion of a ``{"prompt", "completion"}`` row.

    With a chat template: the prompt as one user turn, or, when the prompt is a chat
    transcript (an uploaded ``messages`` row), those messages, so the row trains on the
    very text a chat request with the same messages is served with. Without a template:
    the prompt as it is.
    """
    if not has_chat_template(tokenizer):
        return prompt
    messages = parse_transcript(prompt) or [{"role": "user", "content": prompt}]
    return render_messages(tokenizer, messages)


def encode_rendered(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts. A chat template already writes its special tokens,
    so the tokenizer adds none then; otherwise it adds its usual ones (e.g. BOS)."""
    special = not has_chat_template(tokenizer)
    return tokenizer(list(texts), add_special_tokens=special)["input_ids"]


def prompt_token_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each row prompt in the shared format (what precedes the completion)."""
    return encode_rendered(tokenizer, [render_prompt(tokenizer, prompt) for prompt in prompts])
