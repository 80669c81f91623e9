"""The lexical head: the classic TF-IDF + logistic regression model, blended with the adapter.

A classification specialist is served as ``w * p_adapter + (1 - w) * p_lexical``: the
LoRA adapter's class probabilities mixed with those of the classic baseline the evaluation
fits on the same training rows (``baselines.fit_classic_classifier``). The recipe chooses
``w`` on the validation rows it carves from the training rows (lowest log loss on a grid,
ties to the adapter), so the blend only leans on the lexical model where it helped on rows
the adapter was not trained on; ``w = 1`` means the adapter alone and no head is written.

Measured (``bench/late_fusion.py``, four sealed splits, 2,000 training rows): the adapter
alone trails the classic model on State of the Union passages by 4.3 points on average;
the blend leads it on every corpus.

The head is one safetensors file, written and read by this module only: the vocabularies
as UTF-8 bytes plus offsets, the idf vectors, the coefficients and the intercept, with the
vectoriser settings and ``w`` as JSON in the header's ``__metadata__``. It is parsed by the
strict ``safe_weights`` check first and then by ``safetensors.numpy`` (no pickle, ever);
every shape is checked against the others before anything is built from it. Loading
needs scikit-learn's ``CountVectorizer`` (with the stored vocabulary, nothing fitted)
and numpy/scipy; no torch, no Django.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training_worker.ml.safe_weights import validate_safetensors_bytes

FORMAT = "niche-lexical-head"
FORMAT_VERSION = 1
FILENAME = "lexical_head.safetensors"
METHOD = (
    "w x adapter probabilities + (1 - w) x classic TF-IDF + logistic regression probabilities; "
    "w chosen on the validation rows (lowest log loss on a 0.05 grid, ties to the adapter)"
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
    """A fitted classic classifier, its blend weight, and the label count of its version."""

    vectorisers: tuple[Vectoriser, ...]
    coef: np.ndarray  # (1, features) for two classes, else (classes, features)
    intercept: np.ndarray  # (1,) or (classes,)
    classes: np.ndarray  # label ids the model knows, ascending; others get probability 0
    n_labels: int
    weight: float  # of the adapter: w in w * p_adapter + (1 - w) * p_lexical

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
        config = {"n_labels": self.n_labels, "weight": self.weight, "vectorisers": blocks}
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "config": json.dumps(config, sort_keys=True),
        }
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, payload: bytes) -> LexicalHead:
        """Parse a head written by ``to_bytes``; raises ``UnsafeWeightsError`` for a file the
        strict safetensors check refuses and ``LexicalHeadInvalid`` for anything else."""
        from safetensors.numpy import load

        metadata = validate_safetensors_bytes(payload).metadata
        if metadata.get("format") != FORMAT or metadata.get("format_version") != str(
            FORMAT_VERSION
        ):
            raise LexicalHeadInvalid("Not a lexical head of a format this version reads.")
        try:
            return _build(json.loads(metadata.get("config", "")), load(payload))
        except LexicalHeadInvalid:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise LexicalHeadInvalid(f"The lexical head does not fit together: {exc}") from exc


def _build(config: dict, tensors: dict[str, np.ndarray]) -> LexicalHead:
    def check(condition: bool, message: str) -> None:
        if not condition:
            raise LexicalHeadInvalid(message)

    check(isinstance(config, dict), "config is not an object")
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
    return LexicalHead(tuple(vectorisers), coef, intercept, classes, n_labels, float(weight))


def from_pipeline(pipeline: Any, n_labels: int, weight: float = 1.0) -> LexicalHead | None:
    """The head of a pipeline ``baselines.fit_classic_classifier`` fitted; None when it is
    the constant model it falls back to (fewer than two classes in the training rows)."""
    from sklearn.linear_model import LogisticRegression

    union, classifier = pipeline.named_steps["features"], pipeline.named_steps["classifier"]
    if not isinstance(classifier, LogisticRegression):
        return None
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
