#!/usr/bin/env python3
"""Run this Niche export bundle on your own machine: the model Niche serves, outside Niche.

In the unpacked bundle folder::

    python -m pip install torch transformers peft scikit-learn safetensors numpy
    python load.py --base <folder> "a text to classify" "another one"
    python load.py --base <folder> "a prompt"            # a generation bundle: greedy text
    python load.py --base <folder> --public-key niche-signing-key.json "..."  # + cryptography

``--base`` is a local folder holding the base model's files (safetensors weights,
``config.json``, the tokenizer) or its Hugging Face Hub id; ``base_model.json`` names the
base, its revision and the Hub id where Niche knows one. Without ``--base`` that Hub id is
used.

What it does, in order, refusing rather than guessing:

1. checks every file against ``MANIFEST.json`` (SHA-256 and size); with ``--public-key``
   (the PEM, or the JSON that ``/.well-known/niche-signing-key`` serves) it first checks
   ``MANIFEST.sig``, the platform's Ed25519 signature over ``MANIFEST.json``;
2. loads the base the way Niche does: for classification, the head the adapter was trained
   on, read from the adapter's tensor names as the serving engine reads it (``mean``: the
   attention-masked mean of the encoder's last hidden states, the sentence embedding a
   sentence-transformers base was trained for, fed to a ``classifier`` Linear; else
   transformers' ``AutoModelForSequenceClassification``); for generation,
   ``AutoModelForCausalLM``. Only safetensors weights, never remote code;
3. applies the adapter with ``peft.PeftModel.from_pretrained`` and checks that every
   tensor of ``adapter_model.safetensors`` is now in the model;
4. classification: cuts each text to the tokens the version was served with, softmaxes the
   adapter's logits and, when the bundle holds ``lexical_head.safetensors``, blends them
   with the lexical head's probabilities (``w * adapter + (1 - w) * lexical``, ``w`` and the
   head's layout read from the file's own ``__metadata__``) and prints every label's
   probability; generation: renders the prompt as training did (the tokenizer's chat
   template, when it has one) and generates greedily, token by token, as the serving
   engine does.

Output is JSON, shaped like the answer of ``POST /api/v1/models/{listing}/predict``. As a
library: ``bundle = load_bundle(folder, base=...)``, then ``bundle.predict([...])`` or
``bundle.generate("...")``.

This file imports nothing from Niche: the standard library, torch, transformers, peft,
scikit-learn, safetensors and numpy (and cryptography for ``--public-key``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import inspect
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLE_FORMAT = "niche-export-bundle/1"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
BASE_DOCUMENT = "base_model.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LEXICAL_HEAD = "lexical_head.safetensors"
LEXICAL_FORMAT = "niche-lexical-head"
# Lexical-head formats this loader reads. 1 and 2 share one layout: 2 holds only the terms
# that at least k (`min_training_rows` in its config) training rows share.
LEXICAL_FORMAT_VERSIONS = ("1", "2")
LEXICAL_ANALYZERS = ("word", "char_wb", "char")
# scikit-learn's default token pattern, the only one Niche writes heads with.
LEXICAL_TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # noqa: S105 (a regular expression)
TEXT_CLASSIFICATION = "text-classification"
TEXT_GENERATION = "text-generation"
# A classification adapter trained on the mean-pooled embedding keeps its tensors under the
# module's `encoder`; one trained on transformers' first-token head under `bert.` etc.
MEAN_HEAD_KEY_PREFIX = "base_model.model.encoder."
DEFAULT_MAX_TOKENS = 256  # what is served when the version records no max_seq_length
DEFAULT_MAX_NEW_TOKENS = 64  # the gateway's default for a generation call
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class BundleError(Exception):
    """The bundle (or the base) cannot be loaded as Niche served it; the message says why."""


# --------------------------------------------------------------------------- checks


def _sha256_and_size(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def read_public_key(path: str | Path) -> tuple[Any, str]:
    """(Ed25519 public key, key id) from a PEM file or the JSON the platform serves at
    ``/.well-known/niche-signing-key``. Needs the ``cryptography`` package."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as exc:
        raise BundleError(
            "Checking MANIFEST.sig needs the cryptography package (pip install cryptography), "
            "or check it with openssl: openssl pkeyutl -verify -pubin -inkey niche.pem "
            "-rawin -in MANIFEST.json -sigfile MANIFEST.sig"
        ) from exc
    text = Path(path).read_text()
    try:
        if text.lstrip().startswith("{"):  # the well-known document
            document = json.loads(text)
            raw = base64.b64decode(document["public_key"], validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        else:
            key = serialization.load_pem_public_key(text.encode())
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path} is not an Ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path} is not an Ed25519 public key.")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, hashlib.sha256(raw).hexdigest()[:16]


def verify_bundle(folder: str | Path, public_key: str | Path | None = None) -> dict:
    """The manifest, once the signature (with ``public_key``) and every listed file's
    SHA-256 and size check out. Raises BundleError naming what does not."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"No {MANIFEST} in {folder}: is this an unpacked Niche bundle?")
    manifest_bytes = manifest_path.read_bytes()
    if public_key is not None:
        from cryptography.exceptions import InvalidSignature

        key, key_id = read_public_key(public_key)
        signature_path = folder / SIGNATURE
        if not signature_path.is_file():
            raise BundleError(f"No {SIGNATURE} in {folder}.")
        try:
            key.verify(signature_path.read_bytes(), manifest_bytes)
        except InvalidSignature as exc:
            raise BundleError(f"{SIGNATURE} does not verify {MANIFEST} with this key.") from exc
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        raise BundleError(f"{MANIFEST} is not JSON: {exc}") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{MANIFEST} says format {manifest.get('format')!r}; this load.py reads "
            f"{BUNDLE_FORMAT!r}."
        )
    if public_key is not None and manifest.get("signature", {}).get("key_id") != key_id:
        raise BundleError(f"{MANIFEST} names another signing key than {public_key}.")
    for entry in manifest.get("files", []):
        name = entry["name"]
        if Path(name).name != name or name.startswith("."):
            raise BundleError(f"{MANIFEST} lists a file outside the bundle folder: {name!r}")
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{name} is listed in {MANIFEST} but missing.")
        sha256, size = _sha256_and_size(path)
        if (sha256, size) != (entry["sha256"], entry["size"]):
            raise BundleError(f"{name} does not match its SHA-256 and size in {MANIFEST}.")
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:  # peft would read a pickled adapter_model.bin; Niche never ships one
        raise BundleError(f"Refusing pickle-format files in the bundle folder: {pickled}")
    return manifest


# --------------------------------------------------------------------------- lexical head


@dataclass(frozen=True)
class _TfidfBlock:
    counter: Any  # scikit-learn CountVectorizer with the stored vocabulary (nothing fitted)
    idf: Any  # numpy float64, one per term
    sublinear_tf: bool
    columns: slice  # this block's columns in coef

    def features(self, texts: list[str]) -> Any:
        """L2-normalised TF-IDF rows (scipy CSR), as TfidfVectorizer computes them."""
        import numpy as np
        from sklearn.preprocessing import normalize

        counts = self.counter.transform(texts)
        if self.sublinear_tf:
            np.log(counts.data, counts.data)
            counts.data += 1.0
        counts.data *= self.idf[counts.indices]
        return normalize(counts, norm="l2", copy=False)


@dataclass(frozen=True)
class LexicalHead:
    """The TF-IDF + logistic regression model Niche blends with the adapter."""

    blocks: tuple[_TfidfBlock, ...]
    coef: Any  # (1, features) for two known classes, else (classes, features)
    intercept: Any
    classes: Any  # label ids the model knows; the others get probability 0
    n_labels: int
    weight: float  # the adapter's: w in w * adapter + (1 - w) * lexical

    def predict_proba(self, texts: Sequence[str]) -> Any:
        """(len(texts), n_labels) probabilities in label-id order."""
        import numpy as np

        texts = list(texts)
        out = np.zeros((len(texts), self.n_labels))
        if not texts:
            return out
        scores = np.zeros((len(texts), self.coef.shape[0])) + self.intercept
        for block in self.blocks:
            scores += np.asarray(block.features(texts) @ self.coef[:, block.columns].T)
        if len(self.classes) == 2:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            known = np.stack([1.0 - positive, positive], axis=1)
        else:
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            known = shifted / shifted.sum(axis=1, keepdims=True)
        out[:, self.classes] = known
        return out


def read_lexical_head(path: str | Path) -> LexicalHead:
    """Parse ``lexical_head.safetensors`` from its own ``__metadata__`` (format, format
    version, the TF-IDF blocks, the blend weight); refuses a layout it does not know."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file
    from sklearn.feature_extraction.text import CountVectorizer

    path = Path(path)
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != LEXICAL_FORMAT:
        raise BundleError(f"{path.name} is not a Niche lexical head.")
    version = metadata.get("format_version")
    if version not in LEXICAL_FORMAT_VERSIONS:
        raise BundleError(
            f"{path.name} has lexical-head FORMAT_VERSION {version!r}; this load.py reads "
            f"{', '.join(LEXICAL_FORMAT_VERSIONS)}. Use the load.py shipped in the same "
            "bundle as the head (download the bundle again for a current one)."
        )
    try:
        config = json.loads(metadata["config"])
        tensors = load_file(str(path))
        n_labels, weight = config["n_labels"], float(config["weight"])
        blocks, start = [], 0
        for block in config["vectorisers"]:
            name, analyzer = block["name"], block["analyzer"]
            if analyzer not in LEXICAL_ANALYZERS:
                raise BundleError(f"{path.name}: unknown analyzer {analyzer!r}")
            raw, offsets = tensors[f"{name}.terms"], tensors[f"{name}.offsets"]
            idf = tensors[f"{name}.idf"].astype(np.float64)
            if len(offsets) != len(idf) + 1 or offsets[0] != 0 or offsets[-1] != len(raw):
                raise BundleError(f"{path.name}: {name}.offsets do not cut {name}.terms")
            data = raw.tobytes()
            terms = [data[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(idf))]
            counter = CountVectorizer(
                analyzer=analyzer,
                ngram_range=tuple(block["ngram_range"]),
                vocabulary={term: i for i, term in enumerate(terms)},
                token_pattern=LEXICAL_TOKEN_PATTERN,
                dtype=np.float64,
            )
            columns = slice(start, start + len(terms))
            blocks.append(_TfidfBlock(counter, idf, block["sublinear_tf"] is True, columns))
            start += len(terms)
        coef, intercept = tensors["coef"], tensors["intercept"]
        classes = tensors["classes"].astype(np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path.name} does not fit together: {exc}") from exc
    rows = 1 if len(classes) == 2 else len(classes)
    if coef.shape != (rows, start) or intercept.shape != (rows,):
        raise BundleError(f"{path.name}: coef/intercept do not match its terms and classes")
    if not 0.0 <= weight < 1.0 or classes.min() < 0 or classes.max() >= n_labels:
        raise BundleError(f"{path.name}: weight or classes out of range")
    return LexicalHead(tuple(blocks), coef, intercept, classes, int(n_labels), weight)


# --------------------------------------------------------------------------- prompts
# The one prompt format of Niche's training, evaluation and serving of generation models.

_TRANSCRIPT_ROLES = ("system", "user", "assistant")
_ROLE_AT_LINE_START = re.compile(rf"^({'|'.join(_TRANSCRIPT_ROLES)}): ", re.MULTILINE)
_ASSISTANT_CUE = "assistant:"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def transcript(messages: Sequence[dict[str, str]]) -> str:
    """``role: content`` lines ending in ``assistant:`` (a chat for a base without a
    chat template)."""
    return "\n".join([*(f"{m['role']}: {m['content']}" for m in messages), _ASSISTANT_CUE])


def parse_transcript(prompt: str) -> list[dict[str, str]] | None:
    """The messages of a prompt written as a ``transcript``; None for any other prompt."""
    if not prompt.endswith("\n" + _ASSISTANT_CUE):
        return None
    body = prompt[: -len(_ASSISTANT_CUE)]
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
    """Whether the chat template writes its own system turn when a conversation has none
    (read once per tokenizer, not once per prompt)."""
    cached = getattr(tokenizer, "_niche_injects_default_system", None)
    if cached is None:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        cached = "system" in rendered.split(_SENTINEL)[0]
        tokenizer._niche_injects_default_system = cached
    return cached


def render_messages(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """As Niche trained the adapter: an empty system turn where the template would write
    a default one, then the conversation and the assistant's header."""
    if has_chat_template(tokenizer):
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        if (not turns or turns[0]["role"] != "system") and injects_default_system(tokenizer):
            turns = [{"role": "system", "content": ""}, *turns]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return transcript(messages)


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """The text the model sees before its completion: with a chat template, the prompt as
    one user turn (or a transcript's messages); without one, the prompt as it is."""
    if not has_chat_template(tokenizer):
        return prompt
    return render_messages(
        tokenizer, parse_transcript(prompt) or [{"role": "user", "content": prompt}]
    )


def encode_rendered(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """A chat template writes its own special tokens; otherwise the tokenizer adds its own."""
    return tokenizer(list(texts), add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


# --------------------------------------------------------------------------- models


def _mean_pooling_classifier(encoder: Any, num_labels: int) -> Any:
    """Niche's classifier on a sentence-transformers base: ``encoder`` + masked mean pooling
    + ``classifier``. peft needs ``config`` (the encoder's) on the module it wraps."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPoolingClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.config = encoder.config
            self.config.num_labels = num_labels
            self.dropout = torch.nn.Dropout(getattr(encoder.config, "hidden_dropout_prob", 0.1))
            self.classifier = torch.nn.Linear(self.config.hidden_size, num_labels)

        def forward(
            self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
            **_ignored,
        ):  # fmt: skip
            states = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                inputs_embeds=inputs_embeds,
            ).last_hidden_state
            if attention_mask is None:
                mask = torch.ones(states.shape[:2], dtype=states.dtype, device=states.device)
            else:
                mask = attention_mask.to(states.dtype)
            pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))

    return MeanPoolingClassifier()


def adapter_classification_head(adapter_path: str | Path) -> str:
    """``mean`` or ``first_token``: the head an adapter was trained with, from its tensor
    names (how Niche's serving engine picks the head)."""
    from safetensors import safe_open

    with safe_open(str(adapter_path), framework="pt") as handle:
        keys = list(handle.keys())
    return "mean" if any(k.startswith(MEAN_HEAD_KEY_PREFIX) for k in keys) else "first_token"


def _is_local(base: str) -> bool:
    return Path(base).expanduser().exists()


def _base_kwargs(base: str, revision: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if _is_local(base):
        if not (Path(base) / "config.json").is_file():
            raise BundleError(f"--base {base}: no config.json in that folder.")
        pickled = sorted(p.name for p in Path(base).iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise BundleError(f"--base {base}: refusing pickle-format weights {pickled}.")
    elif revision:
        kwargs["revision"] = revision
    return kwargs


def _check_adapter_loaded(model: Any, adapter_path: Path) -> None:
    """Every tensor of the adapter file is in the model, unchanged (peft only warns)."""
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(adapter_path))
    loaded = get_peft_model_state_dict(model)
    missing = sorted(set(saved) - set(loaded))
    if missing:
        raise BundleError(f"The adapter's tensors did not load into the base: {missing[:3]}")
    for name, tensor in saved.items():
        if not torch.equal(loaded[name].detach().cpu().to(tensor.dtype), tensor):
            raise BundleError(f"The adapter's tensor {name} did not load as stored.")


@dataclass
class Bundle:
    """A loaded bundle: ``predict`` (classification) or ``generate`` (generation)."""

    folder: Path
    manifest: dict
    document: dict  # base_model.json
    tokenizer: Any
    model: Any  # peft.PeftModel
    device: str
    lexical_head: LexicalHead | None = None

    @property
    def task(self) -> str:
        return self.document["task"]

    @property
    def labels(self) -> list[str]:
        return list(self.document.get("labels") or [])

    @property
    def max_tokens(self) -> int:
        return int(self.document.get("max_seq_length") or DEFAULT_MAX_TOKENS)

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Per text ``{"label", "scores": {label: probability}}``, as Niche serves it."""
        import numpy as np
        import torch

        if self.task != TEXT_CLASSIFICATION:
            raise BundleError(f"This bundle is a {self.task} model: use generate().")
        texts = list(texts)
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**encoded).logits
        probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
        if self.lexical_head is not None:
            w = self.lexical_head.weight
            probabilities = w * probabilities + (1.0 - w) * self.lexical_head.predict_proba(texts)
        results = []
        for row in probabilities.tolist():
            scores = dict(zip(self.labels, row, strict=True))
            results.append({"label": max(scores, key=scores.__getitem__), "scores": scores})
        return results

    def generate(
        self, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, stop: Sequence[str] = ()
    ) -> dict[str, Any]:
        """``{"generated_text", "finish_reason", "completion_tokens"}``: greedy decoding with
        a KV cache, one token at a time, stopping at EOS, a stop string or max_new_tokens,
        exactly as Niche's serving engine decodes."""
        import torch

        if self.task != TEXT_GENERATION:
            raise BundleError(f"This bundle is a {self.task} model: use predict().")
        tokenizer = self.tokenizer
        ids = encode_rendered(tokenizer, [render_prompt(tokenizer, prompt)])[0]
        backbone = self.model.get_base_model()  # the LoRA layers live inside it
        limit = int(getattr(backbone.config, "max_position_embeddings", 2048) or 2048)
        if len(ids) + max_new_tokens > limit:
            raise BundleError(
                f"The prompt has {len(ids)} tokens; with max_new_tokens {max_new_tokens} it "
                f"exceeds the model's {limit}."
            )
        parameters = inspect.signature(backbone.forward).parameters
        cache_name = "cache" if "cache" in parameters else "past_key_values"
        eos_id = tokenizer.eos_token_id
        step = torch.tensor([ids], device=self.device)
        mask = torch.ones_like(step)
        past, tokens, text, finish_reason = None, [], "", "length"
        with torch.inference_mode():
            while True:
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                if past is not None:
                    positions = positions[:, -1:]
                out = backbone(
                    input_ids=step, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_name: past},
                )  # fmt: skip
                past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                token = int(out.logits[0, -1, :].argmax(-1))
                if token == eos_id:
                    finish_reason = "stop"
                    break
                tokens.append(token)
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                hits = [text.find(s) for s in stop if s in text]
                if hits:
                    text, finish_reason = text[: min(hits)], "stop"
                    break
                if len(tokens) >= max_new_tokens:
                    break
                step = torch.tensor([[token]], device=self.device)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        return {
            "generated_text": text,
            "finish_reason": finish_reason,
            "completion_tokens": len(tokens),
        }


def load_bundle(
    folder: str | Path = ".",
    base: str | None = None,
    public_key: str | Path | None = None,
    device: str = "cpu",
) -> Bundle:
    """Check the bundle in ``folder`` (see verify_bundle), then load base + adapter (+ the
    lexical head) as Niche serves them. ``base``: a local folder or a Hub id; default the
    Hub id base_model.json names."""
    folder = Path(folder)
    manifest = verify_bundle(folder, public_key)
    document = json.loads((folder / BASE_DOCUMENT).read_text())
    base = base or document.get("hub_id") or ""
    if not base:
        raise BundleError(
            f"Name the base model with --base (a folder or a Hub id): base_model.json says "
            f"{document.get('id')!r}, which is not a Hub id."
        )
    if _is_local(base):  # everything is on disk: never reach the network
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from peft import PeftModel
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    task = document.get("task")
    if task not in (TEXT_CLASSIFICATION, TEXT_GENERATION):
        raise BundleError(
            f"base_model.json names task {task!r}; this load.py runs {TEXT_CLASSIFICATION} "
            f"and {TEXT_GENERATION}."
        )
    kwargs = _base_kwargs(base, document.get("revision"))
    adapter_path = folder / ADAPTER_WEIGHTS
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, **kwargs)
        if task == TEXT_GENERATION:
            model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, **kwargs)
        elif adapter_classification_head(adapter_path) == "mean":
            try:
                encoder = AutoModel.from_pretrained(
                    base, add_pooling_layer=False, use_safetensors=True, **kwargs
                )
            except TypeError:  # an encoder class without a pooler argument
                encoder = AutoModel.from_pretrained(base, use_safetensors=True, **kwargs)
            model = _mean_pooling_classifier(encoder, len(document["labels"]))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=len(document["labels"]), use_safetensors=True, **kwargs
            )
    except OSError as exc:  # no such folder or Hub id, no safetensors weights, offline
        raise BundleError(f"Cannot load the base model {base!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = model.to(device=device, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, folder, is_trainable=False).to(device).eval()
    _check_adapter_loaded(model, adapter_path)
    lexical = (
        read_lexical_head(folder / LEXICAL_HEAD) if (folder / LEXICAL_HEAD).is_file() else None
    )
    if lexical is not None and lexical.n_labels != len(document["labels"]):
        raise BundleError(
            f"{LEXICAL_HEAD} has {lexical.n_labels} labels; base_model.json names "
            f"{len(document['labels'])}."
        )
    return Bundle(folder, manifest, document, tokenizer, model, device, lexical)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a Niche export bundle: classify texts or generate from a prompt.",
    )
    parser.add_argument("inputs", nargs="+", help="texts to classify, or prompts to complete")
    parser.add_argument(
        "--base", help="the base model: a local folder or a Hub id (default: base_model.json's)"
    )
    parser.add_argument(
        "--bundle", default=str(Path(__file__).resolve().parent),
        help="the unpacked bundle folder (default: this file's folder)",
    )  # fmt: skip
    parser.add_argument(
        "--public-key", help="check MANIFEST.sig with this key (PEM, or the well-known JSON)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--verbose", action="store_true", help="keep transformers' load reports and progress bars"
    )
    args = parser.parse_args(argv)
    if not args.verbose:  # stdout is the answer; keep stderr for what went wrong
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        bundle = load_bundle(
            args.bundle, base=args.base, public_key=args.public_key, device=args.device
        )
        answer: dict[str, Any] = {
            "model_version": bundle.manifest.get("model_version"),
            "name": bundle.manifest.get("name"),
            "task": bundle.task,
        }
        if bundle.task == TEXT_CLASSIFICATION:
            predictions = bundle.predict(args.inputs)
            answer["predictions"] = [
                {"input": text, **prediction}
                for text, prediction in zip(args.inputs, predictions, strict=True)
            ]
        else:
            answer["completions"] = [
                {"prompt": prompt, **bundle.generate(prompt, args.max_new_tokens, args.stop)}
                for prompt in args.inputs
            ]
    except BundleError as exc:
        print(f"load.py: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
