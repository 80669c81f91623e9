"""Sequence classification on the sentence embedding a sentence-transformers base was trained for.

``AutoModelForSequenceClassification`` puts its head on the first token through BERT's
pooler. A sentence-transformers checkpoint such as all-MiniLM-L6-v2 was never trained that
way: its contrastive training shaped the *mean* of the token states (``1_Pooling/config.json``
says so), while the ``[CLS]`` state and the pooler are left-overs of pre-training that LoRA
on the attention projections must first undo. ``MeanPoolingClassifier`` classifies the
embedding the base actually produces: masked mean of the last hidden states -> dropout ->
``classifier`` (one ``Linear``, named as transformers names it so peft's ``modules_to_save``,
the export bundle and the serving engine's head capture treat it like any other head).

Measured with the platform's default job on the real corpora of ``bench/corpora.py``
(validation rows carved from the training rows; ``bench/auto_defaults.py --real``): see the
table in ``training_worker/ml/config.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

POOLING_CONFIG = Path("1_Pooling") / "config.json"
CLASSIFICATION_HEADS = ("mean", "first_token")
# Adapter tensors of a MeanPoolingClassifier sit under its ``encoder`` attribute; those of a
# transformers sequence classifier under the architecture's prefix (``bert.``, ...).
MEAN_HEAD_KEY_PREFIX = "base_model.model.encoder."


def recorded_classification_head(task: str, run_record: dict | None) -> str:
    """The head a version's run record names; versions trained before it was recorded used
    transformers' first-token head. "" for generation."""
    if task != "text-classification":
        return ""
    head = (run_record or {}).get("classification_head")
    return head if head in CLASSIFICATION_HEADS else "first_token"


LOADER_COMMAND = 'python load.py --base <folder> "text"'


def how_to_load(task: str, head: str) -> str:
    """A few sentences for the model card and the export bundle: how to run the model as
    Niche serves it, outside Niche: the bundle's ``load.py`` (billing/bundle_loader), and
    what it builds, for whoever rebuilds it by hand."""
    run = (
        f"In the unpacked export bundle, `{LOADER_COMMAND}` (<folder>: the base model's files, "
        "or its Hub id; needs torch, transformers, peft, scikit-learn) checks every file "
        "against MANIFEST.json and prints "
    )
    if task != "text-classification":
        return run + (
            "the greedy completion of the prompt as Niche serves it. By hand: load the base "
            "with AutoModelForCausalLM, then peft.PeftModel.from_pretrained(base, "
            "adapter_folder); prompts go through the tokenizer's chat template when it has one."
        )
    run += "every label's probability as Niche serves it. By hand: "
    if head == "mean":
        return run + (
            "build a torch module with `encoder` = AutoModel.from_pretrained(base, "
            "add_pooling_layer=False), `config` = the encoder's config (peft reads it) and "
            "`classifier` = Linear(hidden_size, len(labels)); its forward feeds the "
            "attention-masked mean of the encoder's last hidden states (the sentence embedding "
            "the base was trained for) to `classifier`. Then "
            "peft.PeftModel.from_pretrained(module, adapter_folder)."
        )
    return run + (
        "load the base with AutoModelForSequenceClassification (num_labels=len(labels)), then "
        "peft.PeftModel.from_pretrained(base, adapter_folder)."
    )


def default_classification_head(source: str | Path) -> str:
    """``"mean"`` for a local sentence-transformers folder with mean pooling, else
    ``"first_token"``."""
    from training_worker.ml.base_models import is_local_source

    if is_local_source(source) and sentence_transformers_mean_pooling(source):
        return "mean"
    return "first_token"


def classification_head(adapter_keys: Iterable[str]) -> str:
    """Which head an adapter was trained with, from its tensor names: adapters made before
    mean pooling (``first_token``) keep loading onto the head they were trained on."""
    keys = list(adapter_keys)
    return "mean" if any(key.startswith(MEAN_HEAD_KEY_PREFIX) for key in keys) else "first_token"


def sentence_transformers_mean_pooling(source: str | Path) -> bool:
    """True when ``source`` is a local sentence-transformers folder whose pooling is the
    plain masked mean of token states (and nothing else: no CLS, max or sqrt-length)."""
    path = Path(source) / POOLING_CONFIG
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    others = (
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    )
    return config.get("pooling_mode_mean_tokens") is True and not any(
        config.get(key) for key in others
    )
