"""Random LoRA adapters built in-process, for the engine's tests and bench/serving.py.

peft initialises B to zero (an adapter that changes nothing); ``init_lora_weights=False``
gives random A and B, so every adapter really changes the output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from serving.protocol import TEXT_CLASSIFICATION, AdapterRef

MINILM_TARGETS = ["query", "key", "value", "dense"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class BuiltAdapter:
    ref: AdapterRef
    directory: Path  # holds adapter_model.safetensors and adapter_config.json


def build_adapter(
    base_model,
    task: str,
    dest: Path,
    *,
    seed: int,
    rank: int = 8,
    labels: list[str] | None = None,
    target_modules: list[str] | None = None,
) -> BuiltAdapter:
    """Save a random LoRA adapter of ``base_model`` (left untouched) under ``dest``."""
    return build_adapters(
        base_model, task, [dest], seeds=[seed], rank=rank, labels=labels,
        target_modules=target_modules,
    )[0]  # fmt: skip


def build_adapters(
    base_model,
    task: str,
    dests: list[Path],
    *,
    seeds: list[int],
    rank: int = 8,
    labels: list[str] | None = None,
    target_modules: list[str] | None = None,
) -> list[BuiltAdapter]:
    """One random adapter per destination: one peft model, its LoRA weights and head drawn
    again from each seed before each save (a benchmark needs a hundred of them)."""
    import copy

    from peft import LoraConfig, TaskType, get_peft_model

    model = copy.deepcopy(base_model)
    classification = task == TEXT_CLASSIFICATION
    labels = list(labels or [])
    if classification:
        head_name = "classifier" if hasattr(model, "classifier") else "score"
        old = getattr(model, head_name)
        head = torch.nn.Linear(old.in_features, len(labels), bias=old.bias is not None)
        setattr(model, head_name, head)
        model.config.num_labels = len(labels)
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {label: i for i, label in enumerate(labels)}
    if target_modules is None:
        target_modules = MINILM_TARGETS if model.config.model_type == "bert" else LLAMA_TARGETS
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM,
        r=rank,
        lora_alpha=2 * rank,
        target_modules=target_modules,
        init_lora_weights=False,
        modules_to_save=([head_name] if classification else None),
    )
    peft_model = get_peft_model(model, config)
    built = []
    for dest, seed in zip(dests, seeds, strict=True):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # large enough that each adapter visibly changes the logits
            for name, parameter in peft_model.named_parameters():
                if "lora_A" in name:
                    bound = 1 / parameter.shape[1] ** 0.5
                    parameter.copy_(
                        torch.empty_like(parameter).uniform_(-bound, bound, generator=generator)
                    )
                elif "lora_B" in name or "modules_to_save" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        dest.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(dest, safe_serialization=True)
        payload = (dest / "adapter_model.safetensors").read_bytes()
        config = (dest / "adapter_config.json").read_bytes()
        ref = AdapterRef(
            model_version_id=f"synthetic-{seed}",
            sha256=hashlib.sha256(payload).hexdigest(),
            adapter_path=str(dest / "adapter_model.safetensors"),
            config_path=str(dest / "adapter_config.json"),
            config_sha256=hashlib.sha256(config).hexdigest(),
            labels=labels,
        )
        built.append(BuiltAdapter(ref=ref, directory=dest))
    return built


def read_local_bytes(path: str) -> bytes:
    return Path(path).read_bytes()
