"""The lexical head: a TF-IDF + logistic regression over terms that many training rows
share, blended with the adapter.

A classification specialist is served as ``w * p_adapter + (1 - w) * p_lexical``: the
LoRA adapter's class probabilities mixed with those of a TF-IDF + logistic regression
model fitted on the same training rows (the classic baseline's blocks and classifier,
``baselines.TFIDF_BLOCKS``, over a pruned vocabulary). The recipe chooses ``w`` on the
validation rows it carves from the training rows (lowest log loss on a grid, ties to the
adapter), so the blend only leans on the lexical model where it helped on rows the adapter
was not trained on; ``w = 1`` means the adapter alone and no head is written.
``bench/late_fusion.py`` measured why blend at all: over four sealed splits the adapter
alone trails the classic model on State of the Union passages, where the blend leads it.

What the head may hold. It ships in the export bundle and answers buyers' calls, so no
training row may be read back from it. A term is kept only when at least
``MIN_TRAINING_ROWS`` (k = 5) distinct training rows hold it. Two ways were weighed:

- Hashed features (no vocabulary) take the terms out of the file but not out of the model:
  a buyer who guesses a token (record numbers are enumerable, surnames come in public
  lists) hashes it and reads whether its bucket carries an idf and a weight, or calls the
  model with and without it. Hashing hides only what cannot be guessed.
- Pruning by document frequency leaves a token of one row no feature at all: it is not in
  the file, and a call that contains it gets the answer a call with an unseen token of the
  same shape gets. What is kept is what k rows share; the idf of a kept term tells how
  many rows hold it (at least k), never which.

So: pruning. Rows are counted once per near-duplicate key (the sealed split's: case,
spacing and punctuation ignored), so copies of one row cannot lift its tokens over k.
scikit-learn's ``min_df`` counts documents, which is right for a token repeated inside one
row (it counts once) but wrong for copies of a row (each would count), so the vocabulary is
counted on de-duplicated rows and the TF-IDF is then fitted on all the training rows over
that fixed vocabulary. Why 5 and not 2: k = 2 already drops every token of a single row,
but one person often has two or three rows (a note and its follow-up, a referral), and a
surname in two rows would survive it; 5 is also the smallest count commonly published in
frequency tables about people. What it costs, measured side by side on one adapter per
corpus (``bench/lexical_privacy.py``, ``bench/results/lexical_privacy.json``): the served
blend loses 1.7 points on State of the Union passages and 0.7 on first names (k = 2: 0.6
and 0; k = 10: 2.3 and 1.3), nothing on SpamAssassin or AFINN; the file is 5-14x smaller.

What it is not: differential privacy. The weights of shared terms are fitted on every row,
so each row moves them a little, as it moves the adapter's weights; membership inference
against a fitted model (the adapter included) is not closed by this.

The evaluation's classic baseline keeps every term (``baselines.fit_classic_classifier``):
it is the bar the specialist is measured against, the model an engineer would fit on these
rows for their own use, and it is only scored on the sealed rows, never shipped. The blend
weight is chosen, and the served blend scored, with the pruned head as shipped.

The head is one safetensors file, written and read by this module only: the vocabularies
as UTF-8 bytes plus offsets, the idf vectors, the coefficients and the intercept, with the
vectoriser settings, ``w`` and k (``min_training_rows``) as JSON in the header's
``__metadata__``. It is parsed by the strict ``safe_weights`` check first and then by
``safetensors.numpy`` (no pickle, ever); every shape is checked against the others before
anything is built from it. Loading needs scikit-learn's ``CountVectorizer`` (with the
stored vocabulary, nothing fitted) and numpy/scipy; no torch, no Django.

Format 2 brought the pruning and k. A head of format 1 (every term kept) is refused with
``LexicalHeadOutdated``: the serving engine does not load it (``adapter_unavailable``,
logged) and the export bundle does not ship it (409 ``adapter_file_refused``, field code
``lexical_head_outdated``); its version must be trained again (the platform has not
launched, and ``make run``'s seeding trains the demo versions anew). A head whose k is
below ``MIN_TRAINING_ROWS`` is refused too.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training_worker.ml.safe_weights import validate_safetensors_bytes
from training_worker.ml.sealed_split import near_duplicate_key

FORMAT = "niche-lexical-head"
FORMAT_VERSION = 2
FILENAME = "lexical_head.safetensors"
# k: a term is kept only when at least this many distinct training rows hold it (see above).
MIN_TRAINING_ROWS = 5
METHOD = (
    "w x adapter probabilities + (1 - w) x TF-IDF + logistic regression probabilities over "
    f"the terms at least {MIN_TRAINING_ROWS} distinct training rows share; w chosen on the "
    "validation rows (lowest log loss on a 0.05 grid, ties to the adapter)"
)
# Blend weights tried on the validation rows; 1.0 is the adapter alone.
WEIGHT_GRID = tuple(round(i / 20, 2) for i in range(21))
ANALYZERS = ("word", "char_wb", "char")
MAX_NGRAM = 8
# The only token pattern the loader accepts: scikit-learn's default. A pattern read from a
# file would be a regular expression from an untrusted source.
DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # noqa: S105 (a regular expression, not a secret)


class LexicalHeadInvalid(ValueError):
    """The file is not a lexical head this module wrote (or its parts do not fit)."""

    code = "lexical_head_invalid"


class LexicalHeadOutdated(LexicalHeadInvalid):
    """A head of an older format, written before rare terms were dropped: never served or
    shipped; its version must be trained again."""

    code = "lexical_head_outdated"


@dataclass(frozen=True)
class Vectoriser:
    """One TF-IDF block: the terms (index = column), their idf, the analyzer settings."""

    name: str
    analyzer: str
    ngram_range: tuple[int, int]
    sublinear_tf: bool
    terms: tuple[str, ...]
    idf: np.ndarray  # float64, one per term
    counter: Any = field(init=False, repr=False, compare=False)  # CountVectorizer, fixed vocab
    nbytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        # Built once per head: a serving process transforms every request's texts with it.
        vocabulary = {term: i for i, term in enumerate(self.terms)}
        counter = CountVectorizer(
            analyzer=self.analyzer,
            ngram_range=self.ngram_range,
            vocabulary=vocabulary,
            token_pattern=DEFAULT_TOKEN_PATTERN,
            dtype=np.float64,
        )
        object.__setattr__(self, "counter", counter)
        # What the head holds in memory (the Python strings and the vocabulary dict weigh
        # far more than the arrays): the serving cache counts it against its budget.
        python_objects = (
            sys.getsizeof(self.terms)
            + 2 * sys.getsizeof(vocabulary)  # scikit-learn keeps a copy as vocabulary_
            + sum(sys.getsizeof(term) + sys.getsizeof(i) for i, term in enumerate(self.terms))
        )
        object.__setattr__(self, "nbytes", python_objects + self.idf.nbytes)

    def transform(self, texts: list[str]) -> Any:
        """Rows of L2-normalised TF-IDF features (scipy CSR), as scikit-learn's
        ``TfidfVectorizer.transform`` computes them with the same settings."""
        from sklearn.preprocessing import normalize

        counts = self.counter.transform(texts)
        if self.sublinear_tf:
            np.log(counts.data, counts.data)
            counts.data += 1.0
        counts.data *= self.idf[counts.indices]
        return normalize(counts, norm="l2", copy=False)


@dataclass(frozen=True)
class LexicalHead:
    """A fitted lexical classifier, its blend weight, the label count of its version, and
    k: every term it holds is shared by at least ``min_training_rows`` training rows."""

    vectorisers: tuple[Vectoriser, ...]
    coef: np.ndarray  # (1, features) for two classes, else (classes, features)
    intercept: np.ndarray  # (1,) or (classes,)
    classes: np.ndarray  # label ids the model knows, ascending; others get probability 0
    n_labels: int
    weight: float  # of the adapter: w in w * p_adapter + (1 - w) * p_lexical
    min_training_rows: int  # k of the pruning (MIN_TRAINING_ROWS for any head written)

    @property
    def nbytes(self) -> int:
        """Bytes it holds in memory, about (Python objects included)."""
        arrays = self.coef.nbytes + self.intercept.nbytes + self.classes.nbytes
        return arrays + sum(v.nbytes for v in self.vectorisers)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), n_labels)``, in label-id order."""
        from scipy import sparse
        from scipy.special import expit, softmax

        texts = list(texts)
        out = np.zeros((len(texts), self.n_labels))
        if not texts:
            return out
        features = sparse.hstack([v.transform(texts) for v in self.vectorisers]).tocsr()
        scores = np.asarray(features @ self.coef.T) + self.intercept
        if len(self.classes) == 2:
            positive = expit(scores[:, 0])
            known = np.stack([1.0 - positive, positive], axis=1)
        else:
            known = softmax(scores, axis=1)
        out[:, self.classes] = known
        return out

    def blend(self, adapter_probabilities: np.ndarray, texts: list[str]) -> np.ndarray:
        """The served probabilities: ``w * adapter + (1 - w) * lexical``, row by row."""
        return blend(adapter_probabilities, self.predict_proba(texts), self.weight)

    # ------------------------------------------------------------------ file
    def to_bytes(self) -> bytes:
        """The head as one safetensors file; only a head that takes part in a blend
        (``0 <= weight < 1``) is ever written, and ``from_bytes`` refuses any other."""
        from safetensors.numpy import save

        if not 0.0 <= self.weight < 1.0:
            raise ValueError(f"a lexical head is written with weight in [0, 1), not {self.weight}")

        tensors: dict[str, np.ndarray] = {
            "coef": np.ascontiguousarray(self.coef, dtype=np.float64),
            "intercept": np.ascontiguousarray(self.intercept, dtype=np.float64),
            "classes": np.ascontiguousarray(self.classes, dtype=np.int64),
        }
        blocks = []
        for v in self.vectorisers:
            encoded = [term.encode("utf-8") for term in v.terms]
            offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(term) for term in encoded])
            tensors[f"{v.name}.terms"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
            tensors[f"{v.name}.offsets"] = offsets
            tensors[f"{v.name}.idf"] = np.ascontiguousarray(v.idf, dtype=np.float64)
            blocks.append(
                {
                    "name": v.name,
                    "analyzer": v.analyzer,
                    "ngram_range": list(v.ngram_range),
                    "sublinear_tf": v.sublinear_tf,
                }
            )
        config = {
            "n_labels": self.n_labels,
            "weight": self.weight,
            "min_training_rows": self.min_training_rows,
            "vectorisers": blocks,
        }
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "config": json.dumps(config, sort_keys=True),
        }
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, payload: bytes) -> LexicalHead:
        """Parse a head written by ``to_bytes``; raises ``UnsafeWeightsError`` for a file the
        strict safetensors check refuses, ``LexicalHeadOutdated`` for a head of an older
        format and ``LexicalHeadInvalid`` for anything else."""
        from safetensors.numpy import load

        config = check_metadata(validate_safetensors_bytes(payload).metadata)
        try:
            return _build(config, load(payload))
        except LexicalHeadInvalid:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise LexicalHeadInvalid(f"The lexical head does not fit together: {exc}") from exc


def check_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """The config of a head whose safetensors ``__metadata__`` is ``metadata``, when this
    version may serve and ship it. Raises ``LexicalHeadOutdated`` for a head of an older
    format (every term kept) and ``LexicalHeadInvalid`` for anything else, a head pruned
    at fewer than ``MIN_TRAINING_ROWS`` rows included. Reads the header only: the export
    bundle checks stored heads with it without loading them."""
    if metadata.get("format") != FORMAT:
        raise LexicalHeadInvalid(f"Not a lexical head: format {metadata.get('format')!r}.")
    version = metadata.get("format_version", "")
    if version.isdigit() and int(version) < FORMAT_VERSION:
        raise LexicalHeadOutdated(
            f"This lexical head has format {int(version)}, written before heads kept only "
            f"the terms at least {MIN_TRAINING_ROWS} training rows share: it may give away "
            "words of single training rows, so it is neither served nor shipped. Train the "
            "version again."
        )
    if version != str(FORMAT_VERSION):
        raise LexicalHeadInvalid("Not a lexical head of a format this version reads.")
    try:
        config = json.loads(metadata.get("config", ""))
    except ValueError as exc:
        raise LexicalHeadInvalid(f"The lexical head's config is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise LexicalHeadInvalid("config is not an object")
    k = config.get("min_training_rows")
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= MIN_TRAINING_ROWS):
        raise LexicalHeadInvalid(
            f"min_training_rows must be an integer >= {MIN_TRAINING_ROWS}: a head that keeps "
            "rarer terms is never served or shipped"
        )
    return config


def _build(config: dict, tensors: dict[str, np.ndarray]) -> LexicalHead:
    def check(condition: bool, message: str) -> None:
        if not condition:
            raise LexicalHeadInvalid(message)

    n_labels, weight = config["n_labels"], config["weight"]
    check(isinstance(n_labels, int) and n_labels >= 2, "n_labels must be an integer >= 2")
    check(isinstance(weight, int | float) and 0.0 <= weight < 1.0, "weight must be in [0, 1)")
    blocks = config["vectorisers"]
    check(isinstance(blocks, list) and blocks, "no vectorisers")
    vectorisers = []
    for block in blocks:
        name, analyzer, ngram_range = block["name"], block["analyzer"], block["ngram_range"]
        check(isinstance(name, str) and name.isidentifier(), "bad vectoriser name")
        check(analyzer in ANALYZERS, f"analyzer must be one of {ANALYZERS}")
        check(
            isinstance(ngram_range, list)
            and len(ngram_range) == 2
            and all(isinstance(n, int) for n in ngram_range)
            and 1 <= ngram_range[0] <= ngram_range[1] <= MAX_NGRAM,
            f"ngram_range must be two integers within 1..{MAX_NGRAM}",
        )
        raw, offsets, idf = (tensors[f"{name}.{part}"] for part in ("terms", "offsets", "idf"))
        check(raw.dtype == np.uint8 and raw.ndim == 1, f"{name}.terms must be bytes")
        check(offsets.dtype == np.int64 and offsets.ndim == 1, f"{name}.offsets must be int64")
        n_terms = len(offsets) - 1
        check(
            n_terms >= 1
            and offsets[0] == 0
            and bool(np.all(np.diff(offsets) > 0))
            and offsets[-1] == len(raw),
            f"{name}.offsets do not cut {name}.terms",
        )
        data = raw.tobytes()
        terms = tuple(data[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_terms))
        check(len(set(terms)) == n_terms, f"{name} repeats a term")
        check(
            idf.dtype == np.float64 and idf.shape == (n_terms,) and bool(np.isfinite(idf).all()),
            f"{name}.idf must be one finite float64 per term",
        )
        vectorisers.append(
            Vectoriser(
                name=name,
                analyzer=analyzer,
                ngram_range=(ngram_range[0], ngram_range[1]),
                sublinear_tf=block["sublinear_tf"] is True,
                terms=terms,
                idf=idf,
            )
        )
    n_features = sum(len(v.terms) for v in vectorisers)
    coef, intercept, classes = tensors["coef"], tensors["intercept"], tensors["classes"]
    check(classes.dtype == np.int64 and classes.ndim == 1, "classes must be int64")
    check(
        len(classes) >= 2
        and bool(np.all(np.diff(classes) > 0))
        and classes[0] >= 0
        and classes[-1] < n_labels,
        "classes must be ascending label ids",
    )
    rows = 1 if len(classes) == 2 else len(classes)
    check(coef.dtype == np.float64 and coef.shape == (rows, n_features), "coef has the wrong shape")
    check(intercept.dtype == np.float64 and intercept.shape == (rows,), "bad intercept shape")
    check(bool(np.isfinite(coef).all() and np.isfinite(intercept).all()), "non-finite weights")
    return LexicalHead(
        tuple(vectorisers), coef, intercept, classes, n_labels, float(weight),
        min_training_rows=config["min_training_rows"],
    )  # fmt: skip


def shared_terms(
    texts: list[str], analyzer: str, ngram_range: tuple[int, int], min_training_rows: int
) -> list[str]:
    """The terms (``analyzer`` n-grams) that at least ``min_training_rows`` distinct rows of
    ``texts`` hold, sorted: rows with one near-duplicate key count once, and a term
    repeated inside one row counts once. Empty when no term is shared that widely."""
    from sklearn.feature_extraction.text import CountVectorizer

    distinct = list({near_duplicate_key(text): text for text in texts}.values())
    counter = CountVectorizer(
        analyzer=analyzer,
        ngram_range=ngram_range,
        token_pattern=DEFAULT_TOKEN_PATTERN,
        min_df=min_training_rows,  # an int: a count of (distinct) rows
        binary=True,
    )
    try:
        counter.fit(distinct)
    except ValueError:  # no term remains, fewer rows than k, or only empty rows
        return []
    return sorted(counter.vocabulary_)


def fit(
    texts: list[str],
    label_ids: list[int],
    *,
    n_labels: int,
    seed: int,
    min_training_rows: int = MIN_TRAINING_ROWS,
) -> LexicalHead | None:
    """The lexical head of these training rows, at weight 1 until the recipe chooses one:
    TF-IDF blocks over the terms at least ``min_training_rows`` distinct rows share (idf
    fitted on all the rows) and the classic baseline's logistic regression over them.
    None when the rows hold fewer than two labels or no term is shared that widely.
    ``min_training_rows`` below ``MIN_TRAINING_ROWS`` is for measurement only (the bench's
    every-term head): ``from_bytes`` refuses such a head, so it is never served."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, Pipeline

    from training_worker.ml.baselines import TFIDF_BLOCKS, classic_logistic_regression

    if min_training_rows < 1:
        raise ValueError(f"min_training_rows must be at least 1, not {min_training_rows}")
    texts = list(texts)
    y = np.asarray(label_ids, dtype=np.int64)
    if len(set(y.tolist())) < 2:
        return None
    blocks = []
    for name, analyzer, ngram_range in TFIDF_BLOCKS:
        terms = shared_terms(texts, analyzer, ngram_range, min_training_rows)
        if terms:
            vectoriser = TfidfVectorizer(
                analyzer=analyzer,
                ngram_range=ngram_range,
                sublinear_tf=True,
                token_pattern=DEFAULT_TOKEN_PATTERN,
                vocabulary=terms,
            )
            blocks.append((name, vectoriser))
    if not blocks:
        return None
    pipeline = Pipeline(
        [("features", FeatureUnion(blocks)), ("classifier", classic_logistic_regression(seed))]
    )
    pipeline.fit(texts, y)
    return _from_pipeline(pipeline, n_labels, min_training_rows=min_training_rows)


def _from_pipeline(
    pipeline: Any, n_labels: int, weight: float = 1.0, *, min_training_rows: int
) -> LexicalHead:
    """The head of a TF-IDF + logistic regression pipeline that ``fit`` built; refuses
    settings ``Vectoriser.transform`` would not reproduce."""
    union, classifier = pipeline.named_steps["features"], pipeline.named_steps["classifier"]
    vectorisers = []
    for name, vectoriser in union.transformer_list:
        unsupported = {
            "lowercase": vectoriser.lowercase is True,
            "norm": vectoriser.norm == "l2",
            "use_idf": vectoriser.use_idf is True,
            "token_pattern": vectoriser.token_pattern == DEFAULT_TOKEN_PATTERN,
            "no preprocessor, tokenizer, stop words or accent stripping": (
                vectoriser.preprocessor is None
                and vectoriser.tokenizer is None
                and vectoriser.stop_words is None
                and vectoriser.strip_accents is None
            ),
            "analyzer": vectoriser.analyzer in ANALYZERS,
        }
        refused = [setting for setting, ok in unsupported.items() if not ok]
        if refused:
            raise LexicalHeadInvalid(f"Vectoriser {name!r} has unsupported settings: {refused}")
        terms = [""] * len(vectoriser.vocabulary_)
        for term, index in vectoriser.vocabulary_.items():
            terms[index] = term
        vectorisers.append(
            Vectoriser(
                name=name,
                analyzer=vectoriser.analyzer,
                ngram_range=tuple(vectoriser.ngram_range),
                sublinear_tf=bool(vectoriser.sublinear_tf),
                terms=tuple(terms),
                idf=np.asarray(vectoriser.idf_, dtype=np.float64),
            )
        )
    return LexicalHead(
        vectorisers=tuple(vectorisers),
        coef=np.asarray(classifier.coef_, dtype=np.float64),
        intercept=np.asarray(classifier.intercept_, dtype=np.float64),
        classes=np.asarray(classifier.classes_, dtype=np.int64),
        n_labels=n_labels,
        weight=weight,
        min_training_rows=min_training_rows,
    )


def blend(adapter: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    return weight * adapter + (1.0 - weight) * lexical


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    picked = probabilities[np.arange(len(y)), y]
    return float(-np.log(np.clip(picked, 1e-9, 1.0)).mean())


def choose_weight(adapter: np.ndarray, lexical: np.ndarray, y: np.ndarray) -> float:
    """The grid weight with the lowest log loss on (validation) rows; ties to the adapter
    (the larger weight). Losses are rounded so that equal ones, up to float noise, tie."""
    y = np.asarray(y, dtype=np.int64)
    losses = [(round(log_loss(blend(adapter, lexical, w), y), 9), -w) for w in WEIGHT_GRID]
    return float(-min(losses)[1])
