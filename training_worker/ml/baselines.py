"""Baselines every specialist is measured against, fitted on the TRAINING rows only.

- classic classification: TF-IDF (word 1-2-grams + char 3-5-grams) + logistic regression;
- classic generation: the completion of the most TF-IDF-similar training prompt;
- few-shot prompts for the un-adapted base model, examples drawn from training rows.

The sealed rows are only ever passed to ``predict``-like calls, after fitting. No Django.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

CLASSIC_CLASSIFIER_METHOD = (
    "scikit-learn TF-IDF (word 1-2-grams + char_wb 3-5-grams, sublinear tf) and "
    "logistic regression (C=10, balanced), fitted on the training rows"
)
NEAREST_NEIGHBOUR_METHOD = (
    "completion of the training row whose prompt is most similar by TF-IDF cosine "
    "(word 1-2-grams + char_wb 3-5-grams)"
)


@dataclass(frozen=True)
class EvaluationOptions:
    """How the sealed-split evaluation scores its generalist baselines.

    ``generalist_llm_path``: a resolved local folder of an instruct causal LM (the
    production default is SmolLM2, set by the caller from ``EVALUATION_GENERALIST_LLM``);
    None skips the LLM generalist. ``generalist_llm_max_rows`` caps the sealed rows it
    scores (its lift is paired on those rows). ``few_shot_k`` training examples go in the
    few-shot generation prompt. ``sealed_evaluations``: this evaluation's number among its
    owner's sealed evaluations on the same data family (1 for the first); every paired lift
    interval is Bonferroni-corrected for that many (``evaluation.lift_percentiles``).
    """

    generalist_llm_path: str | None = None
    generalist_llm_name: str = ""
    generalist_llm_max_rows: int = 100
    few_shot_k: int = 3
    generalist_llm_skip_reason: str = ""  # said in the report when the path is None
    sealed_evaluations: int = 1

    def __post_init__(self) -> None:
        if self.generalist_llm_max_rows < 1:
            raise ValueError("generalist_llm_max_rows must be at least 1")
        if self.sealed_evaluations < 1:
            raise ValueError("sealed_evaluations must be at least 1 (this evaluation)")
        if self.few_shot_k < 0:
            raise ValueError("few_shot_k must not be negative")


# The classic model's TF-IDF blocks (name, analyzer, ngram_range), sublinear tf; the
# lexical head (lexical_head.py) uses the same blocks over a pruned vocabulary.
TFIDF_BLOCKS: tuple[tuple[str, str, tuple[int, int]], ...] = (
    ("words", "word", (1, 2)),
    ("chars", "char_wb", (3, 5)),
)


def _tfidf_features():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            (name, TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range,
                                   sublinear_tf=True, min_df=1))
            for name, analyzer, ngram_range in TFIDF_BLOCKS
        ]
    )  # fmt: skip


def classic_logistic_regression(seed: int):
    """The classic model's classifier (unfitted): the baseline's and the lexical head's."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced", random_state=seed)


def fit_classic_classifier(train_texts: list[str], train_label_ids: list[int], seed: int):
    """A fitted scikit-learn pipeline (TF-IDF features + logistic regression).

    Fitted on ``train_texts`` only; with one class in the training rows it still predicts
    that class (a constant model), so the evaluation never fails for lack of variety. Its
    vocabulary keeps every term of the training rows: it is scored, never shipped (the
    shipped lexical head drops rare terms, ``lexical_head.fit``).
    """
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline

    if len(set(train_label_ids)) < 2:
        classifier = DummyClassifier(strategy="most_frequent")
    else:
        classifier = classic_logistic_regression(seed)
    pipeline = Pipeline([("features", _tfidf_features()), ("classifier", classifier)])
    pipeline.fit(list(train_texts), np.asarray(train_label_ids, dtype=np.int64))
    return pipeline


def classic_classifier_predictions(
    train_texts: list[str], train_label_ids: list[int], sealed_texts: list[str], seed: int
) -> list[int]:
    """Fit on the training rows, then predict the sealed texts (class ids)."""
    pipeline = fit_classic_classifier(train_texts, train_label_ids, seed)
    return [int(label) for label in pipeline.predict(list(sealed_texts))]


def nearest_neighbour_completions(
    train_prompts: list[str], train_completions: list[str], sealed_prompts: list[str]
) -> list[str]:
    """For each sealed prompt, the completion of the most similar training prompt.

    TF-IDF vocabulary and weights come from the training prompts only; ties go to the first
    training row. Returns one completion per sealed prompt.
    """
    if not train_prompts:
        return ["" for _ in sealed_prompts]
    features = _tfidf_features()
    train_matrix = features.fit_transform(list(train_prompts))
    sealed_matrix = features.transform(list(sealed_prompts))
    # Rows are L2-normalised per vectoriser, so the dot product ranks by cosine similarity.
    similarity = (sealed_matrix @ train_matrix.T).toarray()
    nearest = similarity.argmax(axis=1)
    return [train_completions[int(i)] for i in nearest]


def few_shot_examples(train_rows: list[dict], k: int, seed: int) -> list[dict]:
    """``k`` training rows (seeded draw) used as demonstrations; never sealed rows."""
    if k <= 0 or not train_rows:
        return []
    chosen = random.Random(seed).sample(range(len(train_rows)), min(k, len(train_rows)))
    return [train_rows[i] for i in sorted(chosen)]


def few_shot_prompt(examples: list[dict], prompt: str, separator: str) -> str:
    """Demonstrations in the training format (prompt, separator, completion), then the row."""
    shots = "".join(f"{row['prompt']}{separator}{row['completion']}\n\n" for row in examples)
    return f"{shots}{prompt}"
