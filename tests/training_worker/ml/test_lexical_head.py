"""The lexical head: the classic TF-IDF + logistic regression over the terms that at least
k distinct training rows share, carried as safetensors, blended with the adapter by a
weight chosen on validation rows."""

import dataclasses
import json
import pickle
import random

import numpy as np
import pytest
from safetensors.numpy import load, save

from training_worker.ml import lexical_head
from training_worker.ml.baselines import fit_classic_classifier
from training_worker.ml.lexical_head import (
    MIN_TRAINING_ROWS,
    LexicalHead,
    LexicalHeadInvalid,
    LexicalHeadOutdated,
)
from training_worker.ml.safe_weights import UnsafeWeightsError

WORDS = [
    "invoice", "refund", "charged", "twice", "crash", "error", "freeze", "lovely", "great",
    "thanks", "the", "a", "it",
]  # fmt: skip


def rows(n: int, n_labels: int, seed: int) -> tuple[list[str], list[int]]:
    """Texts whose label is carried by a few words (plus accents and an emoji)."""
    rng = random.Random(seed)
    cue = {0: "invoice refund", 1: "crash freeze", 2: "lovely thanks"}
    texts, labels = [], []
    for i in range(n):
        label = i % n_labels
        words = [*rng.sample(WORDS, 5), cue[label], rng.choice(["café", "naïve 😀", "ok"])]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def head_of(texts, labels, n_labels: int, weight: float = 1.0, **options) -> LexicalHead:
    head = lexical_head.fit(texts, labels, n_labels=n_labels, seed=0, **options)
    return dataclasses.replace(head, weight=weight)


def scikit_learn_pipeline(head: LexicalHead, texts, labels):
    """scikit-learn's own TfidfVectorizer + LogisticRegression over the head's terms."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    blocks = [
        (v.name, TfidfVectorizer(analyzer=v.analyzer, ngram_range=v.ngram_range,
                                 sublinear_tf=True, vocabulary=list(v.terms)))
        for v in head.vectorisers
    ]  # fmt: skip
    classifier = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced", random_state=0)
    return Pipeline([("features", FeatureUnion(blocks)), ("classifier", classifier)]).fit(
        texts, labels
    )


@pytest.mark.parametrize("n_labels", [2, 3])
def test_the_head_reproduces_scikit_learns_probabilities_and_survives_its_file(n_labels):
    texts, labels = rows(160, n_labels, seed=0)
    head = head_of(texts[:120], labels[:120], n_labels, weight=0.35)

    expected = scikit_learn_pipeline(head, texts[:120], labels[:120]).predict_proba(texts[120:])
    np.testing.assert_allclose(head.predict_proba(texts[120:]), expected, atol=1e-12)

    reloaded = LexicalHead.from_bytes(head.to_bytes())
    assert reloaded.weight == 0.35 and reloaded.n_labels == n_labels
    assert reloaded.min_training_rows == MIN_TRAINING_ROWS
    np.testing.assert_array_equal(
        reloaded.predict_proba(texts[120:]), head.predict_proba(texts[120:])
    )


def test_with_k_1_the_head_is_the_classic_baseline_and_k_is_all_that_differs():
    texts, labels = rows(160, 3, seed=7)
    every_term = head_of(texts[:120], labels[:120], 3, min_training_rows=1)
    baseline = fit_classic_classifier(texts[:120], labels[:120], seed=0)
    np.testing.assert_allclose(
        every_term.predict_proba(texts[120:]), baseline.predict_proba(texts[120:]), atol=1e-12
    )
    pruned = head_of(texts[:120], labels[:120], 3)
    assert len(pruned.coef[0]) < len(every_term.coef[0])


def test_a_term_fewer_than_k_distinct_rows_hold_has_no_feature():
    # Given rows whose cue words are shared widely, and tokens that only a few rows hold
    texts, labels = rows(120, 2, seed=8)
    texts[0] += " Wojciechowska"  # one row
    texts[1] += " ZQXJ-4417 ZQXJ-4417 ZQXJ-4417"  # one row, repeated inside it
    for copy in ("", "!!", "  "):  # one row and two near-copies of it (case, punctuation)
        texts.append(f"{texts[2].upper()}{copy} Przybyszewski")
        labels.append(labels[2])
    for i in range(3, 3 + MIN_TRAINING_ROWS - 1):  # k - 1 distinct rows
        texts[i] += " Kowalczykowa"

    head = head_of(texts, labels, 2, weight=0.5)

    terms = {term for v in head.vectorisers for term in v.terms}
    for rare in ("wojciechowska", "zqxj", "4417", "przybyszewski", "kowalczykowa"):
        assert rare not in terms
        assert not any(rare[1:5] in term for term in terms)  # nor a character n-gram of it
    # What stays is shared by at least k distinct rows; a probe with a rare token gets the
    # answer a look-alike no row holds gets: no feature knows it.
    assert {"invoice", "refund", "crash"} <= terms
    probes = ["Wojciechowska crash", "Wojciechowsky crash", "ZQXJ-4417 ok", "ZQXJ-4471 ok"]
    probabilities = LexicalHead.from_bytes(head.to_bytes()).predict_proba(probes)
    np.testing.assert_array_equal(probabilities[0], probabilities[1])
    np.testing.assert_array_equal(probabilities[2], probabilities[3])

    # And once k distinct rows hold the surname, it is a term like any other
    texts[3 + MIN_TRAINING_ROWS] += " Kowalczykowa"
    assert "kowalczykowa" in head_of(texts, labels, 2).vectorisers[0].terms


def test_rows_sharing_no_term_k_times_give_no_head():
    texts = ["apple", "zebra", "quartz", "mango", "violin", "rocket", "fjord", "glyph"]
    assert lexical_head.fit(texts, [i % 2 for i in range(8)], n_labels=2, seed=0) is None
    # Fewer rows than k: nothing can be shared by k of them.
    few = ["refund invoice", "crash freeze", "refund again", "crash again"]
    assert lexical_head.fit(few, [0, 1, 0, 1], n_labels=2, seed=0) is None


def test_a_label_missing_from_the_training_rows_gets_probability_zero():
    texts, labels = rows(90, 3, seed=1)
    kept = [i for i, label in enumerate(labels) if label != 1]
    head = head_of([texts[i] for i in kept], [labels[i] for i in kept], 3)
    probabilities = head.predict_proba(texts[:6])
    assert probabilities.shape == (6, 3)
    assert (probabilities[:, 1] == 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_a_head_the_blend_gives_no_weight_is_never_written():
    texts, labels = rows(40, 2, seed=6)
    head = head_of(texts, labels, 2)  # weight 1
    with pytest.raises(ValueError, match="weight"):
        head.to_bytes()


def test_a_constant_model_has_no_head():
    texts, _ = rows(20, 2, seed=2)
    assert lexical_head.fit(texts, [0] * 20, n_labels=2, seed=0) is None


def test_the_blend_weight_leans_on_whichever_model_scores_the_validation_rows():
    y = np.array([0, 1, 0, 1, 1, 0])
    right = np.eye(2)[y] * 0.9 + 0.05
    wrong = np.eye(2)[1 - y] * 0.9 + 0.05
    assert lexical_head.choose_weight(right, wrong, y) == 1.0  # the adapter alone
    assert lexical_head.choose_weight(wrong, right, y) == 0.0  # the lexical model alone
    # Two equally good models tie: the tie goes to the adapter.
    assert lexical_head.choose_weight(right, right.copy(), y) == 1.0
    # Each right on half the rows: a mix beats either alone.
    half = np.where(np.arange(6)[:, None] < 3, right, wrong)
    other = np.where(np.arange(6)[:, None] < 3, wrong, right)
    assert 0.0 < lexical_head.choose_weight(half, other, y) < 1.0
    assert lexical_head.WEIGHT_GRID[0] == 0.0 and lexical_head.WEIGHT_GRID[-1] == 1.0


def test_an_unsure_model_gets_no_weight_and_two_half_right_ones_share_it_evenly():
    y = np.array([0, 1, 0, 1, 1, 0])
    right, unsure = np.eye(2)[y] * 0.9 + 0.05, np.full((6, 2), 0.5)
    assert lexical_head.choose_weight(unsure, right, y) == 0.0
    assert lexical_head.choose_weight(right, unsure, y) == 1.0
    first_half = (np.arange(6) < 3)[:, None]
    wrong = np.eye(2)[1 - y] * 0.9 + 0.05
    adapter, lexical = np.where(first_half, right, wrong), np.where(first_half, wrong, right)
    assert lexical_head.choose_weight(adapter, lexical, y) == 0.5
    blended = lexical_head.blend(adapter, lexical, 0.5)
    assert lexical_head.log_loss(blended, y) == pytest.approx(-np.log(0.5))


def _head_bytes(**changes) -> bytes:
    """A valid head's file with tensors or config replaced."""
    texts, labels = rows(60, 2, seed=3)
    payload = head_of(texts, labels, 2, weight=0.5).to_bytes()
    tensors = load(payload)
    from training_worker.ml.safe_weights import validate_safetensors_bytes

    metadata = dict(validate_safetensors_bytes(payload).metadata)
    config = json.loads(metadata["config"])
    for key, value in changes.items():
        if key in config:
            config[key] = value
        elif key == "metadata":
            metadata.update(value)
        elif value is None:
            del tensors[key]
        else:
            tensors[key] = value
    metadata["config"] = json.dumps(config)
    return save(tensors, metadata=metadata)


def _block(**changes) -> dict:
    return {"name": "words", "analyzer": "word", "ngram_range": [1, 2], "sublinear_tf": True,
            **changes}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metadata": {"format": "something-else"}}, "format"),
        ({"weight": 1.0}, "weight"),
        ({"weight": -0.1}, "weight"),
        ({"n_labels": 1}, "n_labels"),
        ({"coef": np.zeros((1, 3))}, "coef"),
        ({"intercept": np.array([np.nan])}, "non-finite"),
        ({"words.offsets": np.array([0, 2, 1], dtype=np.int64)}, "offsets"),
        ({"words.idf": np.ones(2, dtype=np.float32)}, "idf"),
        ({"classes": np.array([1, 0], dtype=np.int64)}, "classes"),
        ({"classes": np.array([0, 5], dtype=np.int64)}, "classes"),
        ({"chars.terms": None}, "fit together"),
        ({"vectorisers": [_block(analyzer="regex")]}, "analyzer"),
        ({"vectorisers": [_block(ngram_range=[1, 99])]}, "ngram_range"),
        ({"min_training_rows": MIN_TRAINING_ROWS - 1}, "min_training_rows"),
        ({"min_training_rows": None}, "min_training_rows"),
        ({"metadata": {"format_version": "3"}}, "format this version reads"),
    ],
)
def test_a_head_whose_parts_do_not_fit_is_refused(changes, message):
    with pytest.raises(LexicalHeadInvalid, match=message):
        LexicalHead.from_bytes(_head_bytes(**changes))


def test_a_head_written_before_rare_terms_were_dropped_is_refused_as_outdated():
    # Given a head as format 1 wrote it: every term kept, no k in its config
    texts, labels = rows(60, 2, seed=3)
    every_term = head_of(texts, labels, 2, weight=0.5, min_training_rows=1)
    tensors = load(every_term.to_bytes())
    from training_worker.ml.safe_weights import validate_safetensors_bytes

    metadata = dict(validate_safetensors_bytes(every_term.to_bytes()).metadata)
    config = json.loads(metadata["config"])
    del config["min_training_rows"]
    legacy = save(tensors, metadata={**metadata, "format_version": "1",
                                     "config": json.dumps(config)})  # fmt: skip

    with pytest.raises(LexicalHeadOutdated, match="format 1") as refused:
        LexicalHead.from_bytes(legacy)
    assert refused.value.code == "lexical_head_outdated"
    # And a head of today's format that keeps every term is refused too
    with pytest.raises(LexicalHeadInvalid, match="min_training_rows"):
        LexicalHead.from_bytes(every_term.to_bytes())


def test_a_pickle_is_never_read_as_a_head():
    with pytest.raises(UnsafeWeightsError):
        LexicalHead.from_bytes(pickle.dumps({"coef": [1.0]}))


def test_a_vectoriser_with_settings_the_loader_would_not_reproduce_is_refused():
    texts, labels = rows(40, 2, seed=4)
    pipeline = fit_classic_classifier(texts, labels, 0)
    words = pipeline.named_steps["features"].transformer_list[0][1]
    words.token_pattern = r"(a+)+$"  # a regular expression from the file would be untrusted
    with pytest.raises(LexicalHeadInvalid, match="token_pattern"):
        lexical_head._from_pipeline(pipeline, 2, min_training_rows=MIN_TRAINING_ROWS)


def test_the_memory_a_head_reports_is_what_loading_it_takes():
    """The serving cache counts ``nbytes`` against its budget: the Python strings and
    dicts of the vocabulary weigh several times the arrays, and must be counted."""
    import tracemalloc

    texts, labels = rows(400, 3, seed=5)
    texts = [f"{text} {i} user{i}@mail{i % 17}.example" for i, text in enumerate(texts)]
    head = head_of(texts, labels, 3, weight=0.5)
    payload = head.to_bytes()
    tracemalloc.start()
    try:
        head = LexicalHead.from_bytes(payload)
        head.predict_proba(texts[:4])  # scikit-learn copies the vocabulary on first use
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    arrays = head.coef.nbytes + sum(v.idf.nbytes for v in head.vectorisers)
    assert head.nbytes > 3 * arrays
    assert 0.8 < head.nbytes / held < 1.25
