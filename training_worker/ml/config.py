"""Fine-tuning hyperparameters: what the expert may set, validated at the edge, and their
resolution into concrete values (``None`` means "let the platform choose")."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

TaskType = Literal["text-classification", "text-generation"]
TASK_TYPES: tuple[str, ...] = ("text-classification", "text-generation")

# LoRA targets per model family: attention query/value projections, as in the LoRA paper.
TARGET_MODULES_BY_ARCHITECTURE: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
}
# Generation adapts every linear layer of a decoder (attention and MLP): on SmolLM2 it
# beat q/v on validation rows of each generation corpus (GENERATION_RECIPE_MEASURED).
_DECODER_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GENERATION_TARGET_MODULES_BY_ARCHITECTURE: dict[str, list[str]] = {
    "llama": _DECODER_LINEAR,
    "mistral": _DECODER_LINEAR,
    "qwen2": _DECODER_LINEAR,
    "qwen3": _DECODER_LINEAR,
    "gemma": _DECODER_LINEAR,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}

# Auto defaults, measured on 2 CPU cores with MiniLM (see ``LoraHyperparameters.resolve``).
AUTO_EXAMPLES_BUDGET = 6_000  # total examples seen across epochs when n_epochs is auto
# ... and at most this many tokens seen (after truncation), so long rows do not multiply the
# time: a step costs about its tokens. On 2 CPU cores MiniLM trains ~2,850 tokens/s with bf16
# autocast (SpamAssassin, 124-token rows: 3 epochs of 1,440 rows in 188 s) and ~1,450 in fp32,
# so 700,000 tokens is about 4 minutes (8 in fp32). The real corpora of bench/corpora.py stay
# under it at 2,000 rows; 1,000 rows cut at 128 tokens get 5 epochs instead of 6.
AUTO_TOKENS_BUDGET = 700_000
# Generation bases are decoders several times MiniLM's size: SmolLM2-135M with LoRA on every
# linear layer trained 246 tokens/s on 2 idle cores (bf16 autocast), so its budget is
# 135,000 tokens, about 9 minutes (GENERATION_RECIPE_MEASURED).
AUTO_TOKENS_BUDGET_BY_TASK = {
    "text-classification": AUTO_TOKENS_BUDGET,
    "text-generation": 135_000,
}
AUTO_MIN_EPOCHS = 2
AUTO_MAX_EPOCHS = 10
AUTO_BATCH_SIZE = 16
AUTO_LORA_R = 8
# Classification 1e-3 with the mean-pooling head (``mean_pooling_model.py``): on a validation
# split carved from the training rows of the real corpora of bench/corpora.py
# (bench/auto_defaults.py --real, bench/results/auto_defaults_real.json; the sealed rows are
# never looked at) it beat 2e-3 and 3e-3 on SOTU and first names and tied on AFINN-111 (see
# ``LoraHyperparameters.resolve``). Quality of the resulting default job vs the baselines on
# the sealed rows: bench/quality.py -> bench/results/quality.json.
AUTO_LEARNING_RATE = {"text-classification": 1e-3, "text-generation": 2e-3}
# GENERATION_RECIPE_MEASURED: the generation defaults (every linear layer, lr 2e-3, the
# token budget above) were chosen by bench/generation_recipe.py (all of it in
# bench/results/generation_recipe.json) on SmolLM2-135M-Instruct, 2 cores, bf16 autocast:
# 600 training rows of each corpus, scored on the next 150 training rows (validation; the
# bench's sealed rows are dropped unread), batch 16, r 8, greedy decoding. EM = exact
# match; graded = the corpus's graded metric (graded_metrics.py; lower is better for error
# rates, higher for chrF).
#
#   corpus (graded metric)     configuration                    EM     graded  train s
#   CMUdict G2P (token ER)     q/v, lr 1e-3, 3 ep (old) *       0.007  0.624   269
#                              every linear, lr 1e-3 *          0.027  0.525   292
#                              every linear, lr 2e-3 *          0.053  0.464   295
#                              q/v, lr 2e-3 *                   0.013  0.574   170
#                              every linear, lr 2e-3            0.060  0.454   201
#                              every linear, lr 3e-3            0.060  0.455   203
#                              every linear, lr 5e-3            0.067  0.441   202
#                              every linear, lr 2e-3, 6 epochs  0.073  0.429   360
#                              q/v, lr 5e-3, 5 epochs (= time)  0.060  0.470   190
#   past tense (char ER)       q/v, lr 1e-3 (old)               0.747  0.096    93
#                              every linear, lr 2e-3            0.847  0.056   147
#                              every linear, lr 5e-3            0.807  0.071   148
#   Moby-Dick restore (chrF)   not swept (the sweep beside a `make run` was stopped);
#                              its default job: bench/results/quality_generation.json
#   * with SmolLM2's default system turn, 17 more tokens a row (prompts.render_messages:
#     1.65x the tokens for the same quality, 0.464 vs 0.454); the rest with an empty one.
#
# On G2P every linear layer beat q/v at equal learning rate and at equal time (0.441 in
# 202 s vs 0.470 in 190 s with q/v's extra epochs); on past tense the new defaults beat the
# old by 10 points of exact match. 2e-3 beat 1e-3 on G2P, and 5e-3 only on G2P
# (by 0.013, less than the noise of 150 rows) while losing 4 points of exact match on past
# tense, so 2e-3. Twice the epochs bought G2P 0.025 of token error rate for twice the time:
# the budget goes to rows before epochs. NEFTune (alpha 5) on past tense: 0.840 / 0.066
# against 0.847 / 0.056 without, so it stays off (``neftune_alpha`` 0). A beam of width 3
# on that adapter: 0.860 / 0.051 against greedy 0.840 / 0.066, at 2.3x the decoding time;
# the evaluation stays greedy, because it scores what the engine serves. Not measured:
# packing, gradient accumulation, rank 16 at 2e-3. The default jobs on the sealed rows
# (bench/quality.py, bench/results/quality_generation.json): CMUdict exact match 0.165
# (0.040 before), past tense 0.850, Moby-Dick chrF 0.905, each ahead of every baseline on
# its graded metric; training 575 s, 483 s and 620 s (3 epochs each).
AUTO_SEQ_LENGTH_PERCENTILE = 95
AUTO_MIN_SEQ_LENGTH = 16
AUTO_MAX_SEQ_LENGTH = {"text-classification": 128, "text-generation": 256}

# Model selection: a validation split carved from the training rows (never the sealed split).
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_EARLY_STOPPING_PATIENCE = 2
VALIDATION_MIN_ROWS = 20  # fewer rows make the per-epoch score too coarse to choose by
VALIDATION_MAX_ROWS = 500  # enough to rank epochs; more only slows every epoch down
VALIDATION_MIN_TRAIN_ROWS = 100  # below this every row is worth more for training


@dataclass
class LoraHyperparameters:
    """Hyperparameters an expert may set for a LoRA fine-tune; ``None`` means auto.

    Raises ``ValueError`` naming the parameter when a value is out of range.
    """

    n_epochs: int | None = field(
        default=None, metadata={"help": "Passes over the training rows (1-50). Auto: by data size."}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "Rows per optimisation step (1-512). Auto: 16."}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak AdamW learning rate, in (0, 1). Auto: by task."}
    )
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank (1-256). Auto: 8."})
    lora_alpha: int | None = field(
        default=None, metadata={"help": "LoRA scaling alpha (1-1024). Auto: twice the rank."}
    )
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on LoRA input, [0, 1)."})
    target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names to adapt. Auto: attention query/value projections "
            "(classification), every linear layer of a decoder (generation)."
        },
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={
            "help": "Tokens kept per row (8-4096). Auto: 95th percentile of the data, capped."
        },
    )
    warmup_ratio: float = field(
        default=0.06, metadata={"help": "Fraction of steps with linear warm-up, [0, 0.5]."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay, [0, 1)."})
    bias: Literal["none", "all", "lora_only"] = field(
        default="none", metadata={"help": "Which biases to train, as in peft's LoraConfig."}
    )
    validation_fraction: float = field(
        default=DEFAULT_VALIDATION_FRACTION,
        metadata={
            "help": "Share of the training rows held out (stratified) to pick the best epoch, "
            f"[0, 0.5]; clamped to {VALIDATION_MIN_ROWS}-{VALIDATION_MAX_ROWS} rows, none "
            f"below {VALIDATION_MIN_TRAIN_ROWS} training rows; 0 turns model selection off."
        },
    )
    early_stopping_patience: int = field(
        default=DEFAULT_EARLY_STOPPING_PATIENCE,
        metadata={
            "help": "Epochs without a better validation score before training stops (0-50); "
            "0 never stops early. The best epoch's adapter is kept either way."
        },
    )
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "Batch rows of similar length together (less padding, faster); "
            "the batches' order is still shuffled with the seed."
        },
    )
    neftune_alpha: float = field(
        default=0.0,
        metadata={
            "help": "Generation: NEFTune noise on the input embeddings while training "
            "(uniform, scaled by alpha / sqrt(tokens x width)), [0, 50]; 0 turns it off."
        },
    )
    lexical_blend: bool = field(
        default=True,
        metadata={
            "help": "Classification: serve the adapter blended with a classic TF-IDF + "
            "logistic regression model fitted on the same rows, the blend weight chosen on "
            "the validation rows (the adapter alone when that scores best there); false "
            "serves the adapter alone."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``ValueError`` whose message starts with the field name."""
        _check_int_range("n_epochs", self.n_epochs, 1, 50, optional=True)
        _check_int_range("batch_size", self.batch_size, 1, 512, optional=True)
        if self.learning_rate is not None:
            _check_number("learning_rate", self.learning_rate)
            if not 0 < self.learning_rate < 1:
                raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        _check_int_range("lora_r", self.lora_r, 1, 256, optional=True)
        _check_int_range("lora_alpha", self.lora_alpha, 1, 1024, optional=True)
        _check_number("lora_dropout", self.lora_dropout)
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _check_number("warmup_ratio", self.warmup_ratio)
        if not 0 <= self.warmup_ratio <= 0.5:
            raise ValueError(f"warmup_ratio must be in [0, 0.5], got {self.warmup_ratio}")
        _check_number("weight_decay", self.weight_decay)
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"bias must be one of none, all, lora_only, got {self.bias!r}")
        if self.target_modules is not None:
            if not isinstance(self.target_modules, list) or not self.target_modules:
                raise ValueError("target_modules must be a non-empty list of module names")
            if not all(isinstance(name, str) and name for name in self.target_modules):
                raise ValueError("target_modules must contain only non-empty strings")
        _check_int_range("max_seq_length", self.max_seq_length, 8, 4096, optional=True)
        _check_number("validation_fraction", self.validation_fraction)
        if not 0 <= self.validation_fraction <= 0.5:
            raise ValueError(
                f"validation_fraction must be in [0, 0.5], got {self.validation_fraction}"
            )
        _check_int_range("early_stopping_patience", self.early_stopping_patience, 0, 50)
        if not isinstance(self.group_by_length, bool):
            raise ValueError(f"group_by_length must be true or false, got {self.group_by_length!r}")
        _check_number("neftune_alpha", self.neftune_alpha)
        if not 0 <= self.neftune_alpha <= 50:
            raise ValueError(f"neftune_alpha must be in [0, 50], got {self.neftune_alpha}")
        if not isinstance(self.lexical_blend, bool):
            raise ValueError(f"lexical_blend must be true or false, got {self.lexical_blend!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> LoraHyperparameters:
        """Build from a JSON object; raise ``ValueError`` naming unknown keys or bad values."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            allowed = ", ".join(sorted(known))
            raise ValueError(f"unknown hyperparameter(s): {', '.join(unknown)}; allowed: {allowed}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolve(
        self,
        task: str,
        texts_lengths_in_tokens: list[int],
        n_train_rows: int,
        architecture: str,
    ) -> ResolvedHyperparameters:
        """Turn every ``None`` into a concrete value; raise ``ValueError`` naming the parameter.

        Auto defaults, measured with MiniLM-L6 classification on 2 CPU cores shared with other
        processes (``bench/auto_defaults.py``, results in ``bench/results/auto_defaults.json``):
        a noisy 4-class synthetic set (``bench/synthetic_data.py``: overlapping vocabulary,
        10 % labels flipped, 3-60 words), 2,000 train rows, 400 sealed rows, batch 16,
        max_seq_length 40 (auto), r 8. A near-Bayes reference (naive Bayes fitted on 60,000
        rows of the same generator) reaches 0.77 sealed accuracy; embedding zero-shot 0.56.

        ======  ======  ========  ============  ===================================
        lr      epochs  accuracy  macro-F1      train seconds (contended CPU)
        ======  ======  ========  ============  ===================================
        1e-3    3       0.7475    0.7457        271
        3e-3    3       0.745     0.744         369
        3e-3    2       0.740     0.7387        297
        ======  ======  ========  ============  ===================================

        Real corpora (``bench/auto_defaults.py --real``: npm-packaged corpora of
        ``bench/corpora.py``, a validation split carved from the training rows, never the
        sealed rows), validation accuracy of MiniLM with the auto defaults otherwise, with
        transformers' first-token ([CLS] + pooler) head:

        ==================  ======  ======  ===================  =====================
        corpus (fit rows)   lr 1e-3 lr 3e-3 classic TF-IDF + LR  train s (load ~15-20)
        ==================  ======  ======  ===================  =====================
        AFINN-111 (1,582)   0.939   0.962   0.803                411 / 393
        first names (1,600) 0.858   0.845   0.828                609 / 743
        ==================  ======  ======  ===================  =====================

        With the mean-pooling head (the classifier reads the masked mean of the token
        states, the embedding all-MiniLM-L6-v2 was trained to make, instead of ``[CLS]``
        through BERT's pooler), on an idle 2-core machine unless noted; 4 epochs (auto for
        1,600 fit rows); accuracy on the 400 validation rows (classic fitted on the same
        1,600 rows):

        ===================  ==========  ======  ======  ======  =======  ================
        corpus               head        lr 1e-3 lr 2e-3 lr 3e-3 classic  train s (1e-3)
        ===================  ==========  ======  ======  ======  =======  ================
        SOTU party           [CLS]                       0.6225  0.6625   272 (3e-3)
        SOTU party           mean        0.6675          0.640   0.6625   582 (contended)
        first names          mean        0.8625  0.8575  0.815   0.8275   95
        AFINN-111 words      mean        0.9392  0.9494          0.8025   85
        ===================  ==========  ======  ======  ======  =======  ================

        LoRA on every linear layer (query, key, value, dense) with the [CLS] head at 3e-3
        fell to 0.5525 on SOTU and trained 1.5x slower. So: mean pooling, and 1e-3 for
        classification: best or within a point on each corpus, and the only rate that beat
        the classic baseline on SOTU (the hardest corpus). The first-names and AFINN rows
        ran beside a generation job (about half the cores each).

        With bf16 autocast (``recipe.training_precision``), idle machine, same splits:

        ========================================  ========  =======  =======
        SOTU party, mean head, lr 1e-3            accuracy  classic  train s
        ========================================  ========  =======  =======
        defaults (q/v, r 8, 4 epochs)             0.6675    0.6625   180
        LoRA on every linear layer                0.645     0.6625   260
        8 epochs (validation peak at epoch 6)     0.6525    0.6625   379
        SpamAssassin, defaults (3 epochs)         0.990     0.990    188
        ========================================  ========  =======  =======

        Neither more capacity nor more epochs moved SOTU past the classic baseline by more
        than the interval (about +-4.5 points at 400 rows), so the defaults stay.

        Chosen: ``learning_rate = 1e-3`` for classification and for generation;
        ``n_epochs = clamp(round(min(6000 / n_train_rows, 700000 / tokens_per_epoch)), 2, 10)``
        (about 6,000 examples seen, 2,000 rows -> 3 epochs, which was 0.0075 better than 2;
        at most about 700,000 tokens, about 4 minutes of long rows with bf16 on 2 cores);
        ``batch_size = 16``;
        ``max_seq_length`` = 95th percentile of token lengths rounded up to a multiple of 8,
        at least 16, capped at 128 (classification) / 256 (generation); ``lora_r = 8``,
        ``lora_alpha = 2 * r``, ``lora_dropout = 0.1``. On an idle 2-core machine the notes
        give about 110 examples/s for short rows (one-word corpora: 60-114 examples/s here);
        50-word passages (SOTU, ~100 tokens) train at 14-21 examples/s.
        """
        if task not in TASK_TYPES:
            raise ValueError(f"task must be one of {TASK_TYPES}, got {task!r}")
        if n_train_rows < 1:
            raise ValueError(f"n_train_rows must be at least 1, got {n_train_rows}")
        target_modules = self.target_modules
        if target_modules is None:
            by_architecture = (
                GENERATION_TARGET_MODULES_BY_ARCHITECTURE
                if task == "text-generation"
                else TARGET_MODULES_BY_ARCHITECTURE
            )
            target_modules = by_architecture.get(architecture.lower())
            if target_modules is None:
                raise ValueError(
                    f"target_modules has no default for architecture {architecture!r}; set it"
                )
        max_seq_length = self.max_seq_length
        if max_seq_length is None:
            max_seq_length = auto_max_seq_length(task, texts_lengths_in_tokens)
        n_epochs = self.n_epochs
        if n_epochs is None:
            n_epochs = auto_epochs(
                n_train_rows,
                texts_lengths_in_tokens,
                max_seq_length,
                tokens_budget=AUTO_TOKENS_BUDGET_BY_TASK[task],
            )
        lora_r = self.lora_r or AUTO_LORA_R
        return ResolvedHyperparameters(
            task=task,
            n_epochs=n_epochs,
            batch_size=self.batch_size or min(AUTO_BATCH_SIZE, n_train_rows),
            learning_rate=self.learning_rate or AUTO_LEARNING_RATE[task],
            lora_r=lora_r,
            lora_alpha=self.lora_alpha or 2 * lora_r,
            lora_dropout=self.lora_dropout,
            target_modules=list(target_modules),
            max_seq_length=max_seq_length,
            warmup_ratio=self.warmup_ratio,
            weight_decay=self.weight_decay,
            bias=self.bias,
            validation_fraction=self.validation_fraction,
            early_stopping_patience=self.early_stopping_patience,
            group_by_length=self.group_by_length,
            lexical_blend=self.lexical_blend,
            neftune_alpha=self.neftune_alpha,
        )


def auto_epochs(
    n_train_rows: int,
    texts_lengths_in_tokens: list[int],
    max_seq_length: int,
    tokens_budget: int = AUTO_TOKENS_BUDGET,
) -> int:
    """Epochs that show the model about ``AUTO_EXAMPLES_BUDGET`` examples, fewer when that
    would exceed ``tokens_budget`` tokens after truncation (``AUTO_TOKENS_BUDGET_BY_TASK``);
    within [2, 10]."""
    epochs = AUTO_EXAMPLES_BUDGET / n_train_rows
    tokens_per_epoch = sum(min(length, max_seq_length) for length in texts_lengths_in_tokens)
    if tokens_per_epoch:
        epochs = min(epochs, tokens_budget / tokens_per_epoch)
    return max(AUTO_MIN_EPOCHS, min(AUTO_MAX_EPOCHS, round(epochs)))


def auto_max_seq_length(task: str, texts_lengths_in_tokens: list[int]) -> int:
    """95th percentile of the lengths rounded up to a multiple of 8, within [16, cap]."""
    cap = AUTO_MAX_SEQ_LENGTH[task]
    if not texts_lengths_in_tokens:
        return cap
    ordered = sorted(texts_lengths_in_tokens)
    # Nearest-rank percentile: the smallest length that covers 95 % of rows.
    rank = math.ceil(AUTO_SEQ_LENGTH_PERCENTILE / 100 * len(ordered))
    percentile = ordered[max(rank - 1, 0)]
    rounded = int(math.ceil(percentile / 8) * 8)
    return max(AUTO_MIN_SEQ_LENGTH, min(cap, rounded))


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """Concrete hyperparameters of one run; logged before training and stored on the version."""

    task: str
    n_epochs: int
    batch_size: int
    learning_rate: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: list[str]
    max_seq_length: int
    warmup_ratio: float
    weight_decay: float
    bias: str
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    early_stopping_patience: int = DEFAULT_EARLY_STOPPING_PATIENCE
    group_by_length: bool = True
    lexical_blend: bool = True
    neftune_alpha: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_int_range(name: str, value: Any, low: int, high: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
