"""Each base model once per process; adapters on demand, checked, in an LRU bounded by bytes.

- An adapter is read as bytes from storage, its SHA-256 compared with the one the request
  carries (the version row's) BEFORE anything parses it; a mismatch raises
  ``AdapterIntegrityError`` and is logged. The bytes that were hashed are the bytes that are
  parsed, so nothing can swap the file in between. Its ``adapter_config.json`` (lora_alpha,
  rank, target modules: how the weights are applied) is checked the same way against the
  version's ``config_sha256``, and so is a lexical head.
- Only safetensors: the file name must end in ``.safetensors`` and pass
  ``training_worker.ml.safe_weights`` (the strict header check every load point shares)
  before the safetensors library parses it; anything else is refused.
- LoRA weights go into one shared ``PeftModel`` per base (``add_adapter`` +
  ``set_peft_model_state_dict``); a classification head (peft's ``modules_to_save``) is
  kept beside it as a small ``Linear`` per adapter, so adapters with different label
  counts share one base.
- Eviction: least recently used first with peft's ``delete_adapter``, until the adapters'
  bytes fit ``cache_bytes``; adapters the running batch uses are never evicted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from serving.protocol import TEXT_CLASSIFICATION, AdapterRef, ErrorCode

if TYPE_CHECKING:
    from training_worker.ml.lexical_head import LexicalHead

logger = logging.getLogger(__name__)

HEAD_MODULE_NAMES = ("classifier", "score")


class EngineError(Exception):
    code = ErrorCode.ENGINE_ERROR

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code


class AdapterIntegrityError(EngineError):
    code = ErrorCode.ADAPTER_INTEGRITY


class AdapterUnavailable(EngineError):
    code = ErrorCode.ADAPTER_UNAVAILABLE


class BaseUnavailable(EngineError):
    code = ErrorCode.BASE_UNAVAILABLE


def pick_device() -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when present, else CPU with float32."""
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


@dataclass
class LoadedAdapter:
    name: str  # the peft adapter name
    sha256: str
    nbytes: int
    head: torch.nn.Linear | None  # classification only
    last_used: int = 0
    config_sha256: str = ""  # the adapter_config.json these weights were applied with
    # Lexical heads blended with this adapter's probabilities, by their SHA-256 (a version
    # row names one; identical adapter bytes could come with different heads).
    lexical: dict[str, LexicalHead] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.nbytes + sum(head.nbytes for head in self.lexical.values())


@dataclass
class LoadedBase:
    slug: str
    task: str
    tokenizer: Any
    model: Any  # the transformers model, wrapped in a PeftModel once an adapter loads
    device: torch.device
    dtype: torch.dtype
    head_name: str | None = None
    adapters: OrderedDict[str, LoadedAdapter] = field(default_factory=OrderedDict)
    captured: dict[str, torch.Tensor] = field(default_factory=dict)
    # Held by every forward on this base and by whatever changes its model (an eviction
    # asked for by the other lane waits for the running forward).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Adapter names a running batch uses (``ModelRegistry.pin``): never evicted.
    in_use: Counter[str] = field(default_factory=Counter)

    @property
    def peft_model(self) -> Any | None:
        from peft import PeftModel

        return self.model if isinstance(self.model, PeftModel) else None

    @property
    def adapter_bytes(self) -> int:
        return sum(a.total_bytes for a in self.adapters.values())


def adapter_name_for(sha256: str) -> str:
    # Content-addressed: peft names may not contain dots; a SHA-256 prefix cannot.
    return f"sha_{sha256[:32]}"


class ModelRegistry:
    """Holds loaded bases and their adapters, shared by the engine's two lanes (threads):
    ``lock`` guards the maps, loads and evictions; each base's ``lock`` is held by its
    forwards, so evicting from it (asked for by the other lane) waits for the forward; the
    adapters of a running batch are pinned (``pin``) and never evicted. A base's adapters
    are loaded by its own lane's thread, between its forwards."""

    def __init__(
        self,
        *,
        resolve_base: Callable[[str], str],
        read_bytes: Callable[[str], bytes],
        cache_bytes: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.resolve_base = resolve_base
        self.read_bytes = read_bytes
        self.cache_bytes = cache_bytes
        default_device, default_dtype = pick_device()
        self.device = device or default_device
        self.dtype = dtype or default_dtype
        self.bases: dict[tuple[str, str, str], LoadedBase] = {}
        self.heads: dict[str, str] = {}  # adapter SHA-256 -> the classification head it needs
        self.clock = 0  # ticks on every use: the LRU order across bases
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ bases
    def base(self, slug: str, task: str, head: str = "") -> LoadedBase:
        """The loaded base for ``(slug, task)``; a classification ``head`` ("mean",
        "first_token"; "" = the base's default) picks the head its adapters were trained on,
        so adapters of both kinds are served (each kind on its own copy of the base)."""
        with self.lock:
            key = (slug, task, head)
            if key not in self.bases:
                self.bases[key] = self._load_base(slug, task, head)
            return self.bases[key]

    def adapter_head(self, ref: AdapterRef) -> str:
        """The classification head ``ref``'s adapter was trained on, read from its tensor
        names (cached by SHA-256) once the bytes have passed the same SHA-256 check as a
        load. Raises ``AdapterIntegrityError``, or ``AdapterUnavailable`` if the file is
        missing or not safetensors."""
        from training_worker.ml.pooling import classification_head
        from training_worker.ml.safe_weights import UnsafeWeightsError, validate_safetensors_bytes

        with self.lock:
            if ref.sha256 not in self.heads:
                payload = self._read_hashed_weights(ref, "adapter", ref.adapter_path, ref.sha256)
                try:
                    header = validate_safetensors_bytes(payload)
                except UnsafeWeightsError as exc:
                    raise AdapterUnavailable(
                        f"The adapter is not a valid safetensors file: {exc}"
                    ) from exc
                names = (tensor.name for tensor in header.tensors)
                self.heads[ref.sha256] = classification_head(names)
            return self.heads[ref.sha256]

    def _load_base(self, slug: str, task: str, head: str = "") -> LoadedBase:
        from training_worker.ml.base_models import load_tokenizer_and_model
        from training_worker.ml.errors import BaseModelUnavailable

        try:
            path = self.resolve_base(slug)
            tokenizer, model = load_tokenizer_and_model(path, None, task, head=head or None)
        except BaseModelUnavailable as exc:
            raise BaseUnavailable(f"Base model {slug!r} cannot be loaded: {exc}") from exc
        model.to(device=self.device, dtype=self.dtype).eval()
        loaded = LoadedBase(
            slug=slug,
            task=task,
            tokenizer=tokenizer,
            model=model,
            device=self.device,
            dtype=self.dtype,
        )
        if task == TEXT_CLASSIFICATION:
            loaded.head_name = next(n for n in HEAD_MODULE_NAMES if hasattr(model, n))

            def capture(_module, args):
                loaded.captured["features"] = args[0]

            getattr(model, loaded.head_name).register_forward_pre_hook(capture)
        logger.info("serving: loaded base %s for %s on %s", slug, task, self.device)
        return loaded

    # --------------------------------------------------------------- adapters
    def ensure_adapters(
        self, base: LoadedBase, refs: Iterable[AdapterRef], pinned: set[str] | None = None
    ) -> None:
        """Load what is missing (checked), mark all as recently used, then evict to fit,
        never evicting ``refs`` or the ``pinned`` adapter names (the running batch's)."""
        with self.lock:
            pinned = (pinned or set()) | {name for name, n in base.in_use.items() if n}
            wanted = {}
            for ref in refs:
                wanted[adapter_name_for(ref.sha256)] = ref
            for name, ref in wanted.items():
                loaded = base.adapters.get(name)
                if loaded is not None and loaded.config_sha256 != ref.config_sha256:
                    # The same weights under another configuration (lora_alpha, targets):
                    # applied again, as the configuration this version names says.
                    if name in (pinned or set()):
                        raise AdapterUnavailable(
                            "These adapter weights are in use with another configuration."
                        )
                    self.evict(base, name)
                if name in base.adapters:
                    base.adapters.move_to_end(name)
                else:
                    base.adapters[name] = self._load_adapter(base, ref, name)
                self.clock += 1
                base.adapters[name].last_used = self.clock
                self._check_labels(base, base.adapters[name], ref)
                self._ensure_lexical(base.adapters[name], ref)
            self._evict(base, keep=set(wanted) | (pinned or set()))

    def _check_labels(self, base: LoadedBase, adapter: LoadedAdapter, ref: AdapterRef) -> None:
        if base.task != TEXT_CLASSIFICATION:
            return
        if adapter.head is None:
            raise AdapterUnavailable("This classification adapter has no head.")
        if adapter.head.out_features != len(ref.labels):
            raise AdapterUnavailable(
                f"The adapter's head has {adapter.head.out_features} outputs but the version "
                f"names {len(ref.labels)} labels."
            )

    def _read_hashed_weights(self, ref: AdapterRef, what: str, path: str, sha256: str) -> bytes:
        """The stored bytes of one of ``ref``'s weights files, refused unless the name is a
        safetensors one and the bytes hash to ``sha256`` (``_read_hashed``)."""
        from training_worker.ml.safe_weights import UnsafeWeightsError, check_weights_filename

        try:
            check_weights_filename(path)
        except UnsafeWeightsError as exc:
            raise AdapterUnavailable(f"Only safetensors {what} files are served: {exc}") from exc
        return self._read_hashed(ref, what, path, sha256)

    def _read_hashed(self, ref: AdapterRef, what: str, path: str, sha256: str) -> bytes:
        """The stored bytes of one of ``ref``'s files, refused (``AdapterIntegrityError``,
        logged) unless they hash to ``sha256``, the version row's, compared before anything
        parses them; a ref that carries no SHA-256 for the file is refused too. The caller
        parses these very bytes."""
        if not sha256:
            logger.error(
                "serving: version %s names no SHA-256 for its %s (%s); refused",
                ref.model_version_id, what, path,
            )  # fmt: skip
            raise AdapterIntegrityError(f"The version names no SHA-256 for its {what}; refused.")
        try:
            payload = self.read_bytes(path)
        except (FileNotFoundError, OSError) as exc:
            raise AdapterUnavailable(f"The {what} file is missing: {exc}") from exc
        actual = hashlib.sha256(payload).hexdigest()
        if actual != sha256:
            logger.error(
                "serving: %s integrity failure for version %s: expected %s, stored %s (%s)",
                what, ref.model_version_id, sha256, actual, path,
            )  # fmt: skip
            raise AdapterIntegrityError(
                f"The stored {what} does not match the version's SHA-256; refused."
            )
        return payload

    def _ensure_lexical(self, adapter: LoadedAdapter, ref: AdapterRef) -> None:
        """Load the lexical head ``ref`` names, checked like the adapter: SHA-256 of the
        stored bytes first, then the strict safetensors parser, then its own checks. A head
        of an older format (every training term kept) is refused and logged: the version
        answers ``adapter_unavailable``, never the adapter alone in its place."""
        from training_worker.ml.lexical_head import (
            LexicalHead,
            LexicalHeadInvalid,
            LexicalHeadOutdated,
        )
        from training_worker.ml.safe_weights import UnsafeWeightsError

        if not ref.lexical_head_path or ref.lexical_head_sha256 in adapter.lexical:
            return
        payload = self._read_hashed_weights(
            ref, "lexical head", ref.lexical_head_path, ref.lexical_head_sha256
        )
        try:
            head = LexicalHead.from_bytes(payload)
        except LexicalHeadOutdated as exc:
            # Written before heads dropped rare terms: it may hold words of single training
            # rows, so the version is not served until it is trained again.
            logger.error(
                "serving: version %s has an outdated lexical head %s, refused: %s",
                ref.model_version_id, ref.lexical_head_sha256, exc,
            )  # fmt: skip
            raise AdapterUnavailable(f"The lexical head is refused: {exc}") from exc
        except (UnsafeWeightsError, LexicalHeadInvalid) as exc:
            raise AdapterUnavailable(f"The lexical head is refused: {exc}") from exc
        if head.n_labels != len(ref.labels):
            raise AdapterUnavailable(
                f"The lexical head has {head.n_labels} labels but the version names "
                f"{len(ref.labels)}."
            )
        adapter.lexical[ref.lexical_head_sha256] = head
        logger.info(
            "serving: loaded lexical head %s (%d bytes)", ref.lexical_head_sha256, head.nbytes
        )

    def _load_adapter(self, base: LoadedBase, ref: AdapterRef, name: str) -> LoadedAdapter:
        from peft import PeftModel, get_peft_model
        from peft.config import PeftConfig
        from peft.utils import set_peft_model_state_dict
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        from training_worker.ml.safe_weights import validate_safetensors_bytes

        payload = self._read_hashed_weights(ref, "adapter", ref.adapter_path, ref.sha256)
        # How the weights are applied (lora_alpha scales them): checked like the weights.
        config_payload = self._read_hashed(
            ref, "adapter config", ref.config_path, ref.config_sha256
        )
        try:
            validate_safetensors_bytes(payload)  # our strict header check, before safetensors'
            state = load_safetensors(payload)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise AdapterUnavailable(f"The adapter is not a valid safetensors file: {exc}") from exc
        try:
            config_dict = json.loads(config_payload)
            if config_dict.get("peft_type") != "LORA":
                raise ValueError("only LoRA adapters are served")
            if config_dict.get("bias", "none") != "none" or config_dict.get("use_dora"):
                raise ValueError("LoRA with trained biases or DoRA is not served")
            head_names = list(config_dict.get("modules_to_save") or [])
            config_dict.update(task_type=None, modules_to_save=None, inference_mode=True)
            config = PeftConfig.from_peft_type(**config_dict)
        except (ValueError, TypeError) as exc:
            raise AdapterUnavailable(f"Unsupported adapter configuration: {exc}") from exc

        head_state = {
            key: value
            for key, value in state.items()
            if any(f".{head}." in f".{key}" for head in head_names + list(HEAD_MODULE_NAMES))
            and "lora_" not in key
        }
        lora_state = {k: v for k, v in state.items() if k not in head_state}
        head = None
        if base.task == TEXT_CLASSIFICATION:
            head = self._build_head(head_state)
        try:
            if base.peft_model is None:
                base.model = get_peft_model(base.model, config, adapter_name=name)
            else:
                base.model.add_adapter(name, config)
            result = set_peft_model_state_dict(base.model, lora_state, adapter_name=name)
            unexpected = [k for k in result.unexpected_keys if "lora_" in k]
            if unexpected:
                raise ValueError(f"weights for modules the base does not have: {unexpected[:3]}")
        except (ValueError, RuntimeError, KeyError) as exc:
            if isinstance(base.model, PeftModel) and name in base.model.peft_config:
                base.model.delete_adapter(name)
            raise AdapterUnavailable(f"The adapter does not fit base {base.slug}: {exc}") from exc
        base.model.to(device=base.device, dtype=base.dtype).eval()
        nbytes = sum(t.numel() * torch.finfo(base.dtype).bits // 8 for t in state.values())
        logger.info("serving: loaded adapter %s (%d bytes) on %s", ref.sha256, nbytes, base.slug)
        return LoadedAdapter(
            name=name, sha256=ref.sha256, nbytes=nbytes, head=head, config_sha256=ref.config_sha256
        )

    def _build_head(self, head_state: dict[str, torch.Tensor]) -> torch.nn.Linear:
        weights = {k.rsplit(".", 1)[-1]: v for k, v in head_state.items()}
        if set(weights) - {"weight", "bias"} or "weight" not in weights:
            raise AdapterUnavailable("Only a single Linear classification head is served.")
        weight = weights["weight"]
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in weights)
        head.weight.data.copy_(weight)
        if "bias" in weights:
            head.bias.data.copy_(weights["bias"])
        return head.to(device=self.device, dtype=self.dtype).eval()

    def _evict(self, base: LoadedBase, keep: set[str]) -> None:
        """Least recently used first across every base, until the bytes fit."""
        while sum(b.adapter_bytes for b in self.bases.values()) > self.cache_bytes:
            candidates = [
                (adapter.last_used, owner, name)
                for owner in self.bases.values()
                for name, adapter in owner.adapters.items()
                if not (owner is base and name in keep) and not owner.in_use[name]
            ]
            if not candidates:
                return  # only what this batch uses is left: keep it, over budget
            _, owner, name = min(candidates, key=lambda c: c[0])
            self.evict(owner, name)

    def pin(self, base: LoadedBase, names: Iterable[str]) -> None:
        """A running batch uses these adapters: keep them loaded until ``unpin``."""
        with self.lock:
            base.in_use.update(names)

    def unpin(self, base: LoadedBase, names: Iterable[str]) -> None:
        with self.lock:
            base.in_use.subtract(names)
            for name in [n for n, count in base.in_use.items() if count <= 0]:
                del base.in_use[name]

    def evict(self, base: LoadedBase, name: str) -> None:
        with self.lock, base.lock:
            base.adapters.pop(name)
            base.model.delete_adapter(name)
            logger.info("serving: evicted adapter %s from %s", name, base.slug)
