"""``MeanPoolingClassifier``: the torch half of ``pooling.py`` (imported only by workers)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from training_worker.ml.safe_weights import SafetensorsHeader


def checkpoint_has_pooler(headers: Iterable[SafetensorsHeader]) -> bool:
    """Whether checked safetensors headers (``safe_weights.checked_weights_headers``) hold
    BERT pooler tensors (``pooler.*`` or ``bert.pooler.*``). No headers (a Hub id, whose
    files are not local) answers False."""
    return any(".pooler." in f".{t.name}" for header in headers for t in header.tensors)


class MeanPoolingClassifier(nn.Module):
    """An encoder (any ``AutoModel``) + masked mean pooling + a linear head.

    Called like a transformers sequence classifier: ``forward(input_ids, attention_mask,
    labels=None, ...)`` returns a ``SequenceClassifierOutput`` with ``logits`` (and
    ``loss``, cross-entropy, when ``labels`` are given).
    """

    # LoRA targets keep their names ("query", "value" for BERT): they live under
    # ``encoder.<the encoder's own module names>``.
    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.config.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=getattr(self.config, "initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_pretrained(
        cls, source: str, num_labels: int, revision: str | None = None, with_pooler: bool = False
    ) -> MeanPoolingClassifier:
        """The encoder's safetensors weights (never pickle, never remote code) + a new head."""
        from transformers import AutoModel

        extra = {"revision": revision} if revision else {}
        # BERT-like encoders: the mean replaces the pooler. A checkpoint that ships pooler
        # weights (MiniLM does; the caller says so, ``checkpoint_has_pooler``) is loaded with
        # the pooler, which is then dropped, so the load report does not list those weights
        # as unexpected in every job's log.
        try:
            encoder = AutoModel.from_pretrained(
                source, add_pooling_layer=with_pooler, use_safetensors=True,
                trust_remote_code=False, **extra,
            )  # fmt: skip
            if with_pooler:  # loaded only to match the checkpoint; BERT skips a None pooler
                encoder.pooler = None
        except TypeError:  # an encoder class without that argument (DistilBERT, ...)
            encoder = AutoModel.from_pretrained(
                source, use_safetensors=True, trust_remote_code=False, **extra
            )
        dropout = getattr(encoder.config, "hidden_dropout_prob", 0.1)
        return cls(encoder, num_labels, dropout=dropout)

    # transformers / peft helpers that callers use on a PreTrainedModel
    @property
    def base_model(self) -> nn.Module:
        return self.encoder

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **_ignored: Any,
    ):
        from transformers.modeling_outputs import SequenceClassifierOutput

        outputs = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        states = outputs.last_hidden_state
        if attention_mask is None:
            mask = torch.ones(states.shape[:2], dtype=states.dtype, device=states.device)
        else:
            mask = attention_mask.to(states.dtype)
        summed = (states * mask.unsqueeze(-1)).sum(dim=1)
        pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
