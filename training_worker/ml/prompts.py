"""The one prompt format shared by training, evaluation and serving of generation models.

A base whose tokenizer has a chat template (SmolLM2-Instruct) sees every prompt as one user
turn followed by the assistant header, exactly as the template renders it; the completion
follows. A base without one (tiny-causal) sees the prompt text as it is. Training
(``data.encode_generation``), evaluation (``evaluation.greedy_completions``) and the serving
engine (``serving.engine``) all call these functions, so an adapter is served on the very
format it was trained on. No Django imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_messages(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """Text of a conversation up to the assistant's turn.

    With a chat template: the template with its generation prompt. Without: a single user
    message is its content as is (the training format); longer conversations become a
    ``role: content`` transcript ending in ``assistant:``.
    """
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """Text the model sees before the completion of a ``{"prompt", "completion"}`` row."""
    return render_messages(tokenizer, [{"role": "user", "content": prompt}])


def encode_rendered(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts. A chat template already writes its special tokens,
    so the tokenizer adds none then; otherwise it adds its usual ones (e.g. BOS)."""
    special = not has_chat_template(tokenizer)
    return tokenizer(list(texts), add_special_tokens=special)["input_ids"]


def prompt_token_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each row prompt in the shared format (what precedes the completion)."""
    return encode_rendered(tokenizer, [render_prompt(tokenizer, prompt) for prompt in prompts])
