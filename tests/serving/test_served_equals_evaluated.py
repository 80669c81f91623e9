"""What a buyer is served on a version's sealed rows is what the platform's evaluation
scored there, for every registered base: the same probabilities (so the same labels) for a
classifier, the same greedy text for a generator.

Each version is trained by the real recipe (``training_worker.ml.recipe.run_fine_tune``) on
a handful of rows with a short ``max_seq_length``, on rows and prompts longer than it, so
every place where a row could be cut differently is exercised (tiny-causal, a randomly
initialised base that a few steps teach to answer the empty string, carries a random LoRA
adapter instead, so that its answers are text to compare). The served side is the real
engine (``serving.engine.service.Engine`` over a ``ModelRegistry`` that reads the version's
files and checks their SHA-256); the evaluated side is the evaluation's own functions,
on the adapter reloaded from its files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import pkgutil
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings

from serving.engine.registry import ModelRegistry
from serving.engine.service import Engine
from serving.engine.synthetic import build_adapter, read_local_bytes
from serving.protocol import (
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    AdapterRef,
    GenerationParameters,
    InferenceRequest,
    result_from_dict,
)
from training_worker.ml import evaluation
from training_worker.ml.base_models import (
    build_tiny_causal_lm,
    load_tokenizer_and_model,
    resolve_base_model_source,
)
from training_worker.ml.baselines import EvaluationOptions
from training_worker.ml.config import LoraHyperparameters
from training_worker.ml.inference import load_adapter_model
from training_worker.ml.lexical_head import LexicalHead
from training_worker.ml.prompts import prompt_token_ids
from training_worker.ml.recipe import SilentCallbacks, TrainingResult, TrainingSpec, run_fine_tune
from training_worker.ml.sealed_split import draw_sealed_split

TOPICS = {
    "cardiology": ["heart", "arrhythmia", "ecg", "murmur", "angina", "valve"],
    "dermatology": ["rash", "eczema", "mole", "psoriasis", "itchy", "lesion"],
    "orthopedics": ["fracture", "knee", "ligament", "cast", "sprain", "bone"],
}
RAMBLE = (
    "the patient arrived late on a rainy tuesday afternoon after a long drive from the coast "
    "and spent a while at the desk talking about the weather and parking before saying that"
)


def classification_rows(per_label: int) -> list[dict]:
    """Three topics; every other row is long (a preamble, then its topic's words)."""
    rng = random.Random(5)
    rows = []
    for label, words in TOPICS.items():
        for n in range(per_label):
            text = f"patient {n} presents with {' '.join(rng.sample(words, 3))} findings"
            rows.append({"text": f"{RAMBLE} {text}" if n % 2 else text, "label": label})
    return rows


def generation_rows(n: int) -> list[dict]:
    """Additions whose prompts open with a long preamble (longer than max_seq_length)."""
    return [
        {
            "prompt": f"{RAMBLE}, please add {a} and {(a * 3) % 5}:",
            "completion": f" {a + (a * 3) % 5}",
        }
        for a in range(n)
    ]


@dataclass
class Version:
    """A trained version as the gateway would send it, and its files."""

    slug: str
    task: str
    base_path: str
    adapter_dir: Path
    ref: AdapterRef
    sealed_rows: list[dict]
    result: TrainingResult | None = None  # None: a random adapter, no recipe run


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def registered_bases() -> dict[str, tuple[str, list[str]]]:
    """slug -> (source, tasks) of every base a migration registers (a fresh install's)."""
    import training_worker.migrations as migrations

    class Recorder:
        rows: dict = {}

        @classmethod
        def update_or_create(cls, slug, defaults):
            cls.rows[slug] = (defaults["source"], list(defaults["tasks"]))

    class Apps:
        @staticmethod
        def get_model(app_label, name):
            assert (app_label, name) == ("training_worker", "BaseModel")
            return type("BaseModel", (), {"objects": Recorder})

    for module in pkgutil.iter_modules(migrations.__path__):
        register = getattr(importlib.import_module(f"{migrations.__name__}.{module.name}"),
                           "register", None)  # fmt: skip
        if register is not None:
            register(Apps, None)
    return Recorder.rows


def base_path(slug: str) -> str:
    source, _ = registered_bases()[slug]
    if source == "cache:tiny-causal":
        tiny = Path(settings.MODEL_CACHE_DIR) / "tiny-causal"
        if not (tiny / "config.json").exists():
            build_tiny_causal_lm(tiny)
    return resolve_base_model_source(source, settings.MODEL_CACHE_DIR)


def train(slug: str, task: str, rows: list[dict], tmp_path: Path, **hyperparameters) -> Version:
    path = base_path(slug)
    split = draw_sealed_split(rows, task=task, seed=11, fraction=0.25)
    labels = sorted({row["label"] for row in rows}) if task == TEXT_CLASSIFICATION else []
    sealed = [rows[i] for i in split.sealed_indices]
    result = run_fine_tune(
        TrainingSpec(
            task=task, base_model_path=path, base_model_revision=None,
            train_rows=[rows[i] for i in split.train_indices], sealed_rows=sealed,
            labels=labels, hyperparameters=LoraHyperparameters(**hyperparameters), seed=3,
            output_dir=tmp_path / "run",
            evaluation_options=EvaluationOptions(generalist_llm_path=None, few_shot_k=0),
        ),
        SilentCallbacks(),
    )  # fmt: skip
    adapter_dir = result.adapter_dir
    head = result.lexical_head_path
    ref = AdapterRef(  # what gateway._served_version reads from the version row
        model_version_id=f"{slug}-parity",
        sha256=sha256_of(adapter_dir / "adapter_model.safetensors"),
        adapter_path=str(adapter_dir / "adapter_model.safetensors"),
        config_path=str(adapter_dir / "adapter_config.json"),
        config_sha256=sha256_of(adapter_dir / "adapter_config.json"),
        labels=labels,
        lexical_head_path=str(head) if head else "",
        lexical_head_sha256=sha256_of(head) if head else "",
        max_seq_length=result.resolved_hyperparameters["max_seq_length"],
    )
    return Version(slug, task, path, adapter_dir, ref, sealed, result)


def new_engine(slug: str, path: str) -> Engine:
    registry = ModelRegistry(
        resolve_base={slug: path}.__getitem__,
        read_bytes=read_local_bytes,
        cache_bytes=256 * 2**20,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    return Engine(registry=registry, redis=None, max_size=32, max_wait_ms=100)


def served_classification(slug: str, path: str, ref: AdapterRef, texts: list[str]) -> list[dict]:
    engine = new_engine(slug, path)
    try:
        request = InferenceRequest(
            request_id=str(uuid.uuid4()), task=TEXT_CLASSIFICATION, base_model=slug,
            adapter=ref, inputs=texts,
        ).to_dict()  # fmt: skip
        answer = result_from_dict(engine.infer(request, timeout=300))
    finally:
        engine.stop()
    return [output.scores for output in answer.outputs]


def served_generation(version: Version, max_new_tokens: int) -> list[str]:
    """Every sealed prompt sent at once, as buyers would: they share decode batches."""
    engine = new_engine(version.slug, version.base_path)
    parameters = GenerationParameters(max_new_tokens=max_new_tokens)

    def call(prompt: str) -> str:
        request = InferenceRequest(
            request_id=str(uuid.uuid4()), task=TEXT_GENERATION, base_model=version.slug,
            adapter=version.ref, prompt=prompt, parameters=parameters,
        ).to_dict()  # fmt: skip
        answer = result_from_dict(engine.infer(request, timeout=300))
        assert not hasattr(answer, "code"), answer
        return answer.outputs.text

    try:
        with ThreadPoolExecutor(len(version.sealed_rows)) as pool:
            return list(pool.map(call, [row["prompt"] for row in version.sealed_rows]))
    finally:
        engine.stop()


# --- the bases


def test_every_registered_base_and_task_has_a_parity_test():
    registered = {(slug, task) for slug, (_, tasks) in registered_bases().items() for task in tasks}
    assert registered == {
        ("minilm-l6", TEXT_CLASSIFICATION),
        ("tiny-causal", TEXT_GENERATION),
        ("smollm2-135m-instruct", TEXT_GENERATION),
    }, "a base was registered: add its case to this module"


@pytest.mark.slow
def test_minilm_classifier_serves_the_probabilities_its_evaluation_scored(tmp_path):
    # Given a classifier trained on rows cut at 16 tokens, half of them longer, whose adapter
    # barely trains (lr 1e-5), so that its validation rows choose a blend with the lexical head
    version = train(
        "minilm-l6", TEXT_CLASSIFICATION, classification_rows(per_label=45), tmp_path,
        n_epochs=1, batch_size=16, learning_rate=1e-5, max_seq_length=16,
    )  # fmt: skip
    assert version.ref.lexical_head_path, version.result.evaluation["blend"]
    texts = [row["text"] for row in version.sealed_rows]
    model, tokenizer = load_adapter_model(
        version.base_path, version.adapter_dir, TEXT_CLASSIFICATION, version.ref.labels
    )
    assert sum(len(ids) > 16 for ids in tokenizer(texts)["input_ids"]) >= 3

    # When the engine answers the sealed rows
    served = served_classification("minilm-l6", version.base_path, version.ref, texts)

    # Then each row's probabilities are the evaluation's: the adapter's, blended
    scored = evaluation.predict_class_probabilities(model, tokenizer, texts, 16, "cpu")
    head = LexicalHead.from_bytes(Path(version.ref.lexical_head_path).read_bytes())
    scored = head.blend(scored, texts)
    labels = version.ref.labels
    served_matrix = np.array([[row[label] for label in labels] for row in served])
    np.testing.assert_allclose(served_matrix, scored, atol=1e-5)
    # and so the accuracy the report certified
    truth = [labels.index(row["label"]) for row in version.sealed_rows]
    accuracy = float(np.mean(served_matrix.argmax(axis=1) == np.array(truth)))
    assert accuracy == pytest.approx(version.result.evaluation["metrics"]["accuracy"], abs=1e-4)


def check_generation(version: Version, max_new_tokens: int) -> None:
    # Given sealed prompts longer than the rows training cut to (max_seq_length)
    model, tokenizer = load_adapter_model(version.base_path, version.adapter_dir, TEXT_GENERATION)
    prompts = [row["prompt"] for row in version.sealed_rows]
    assert all(
        len(ids) > version.ref.max_seq_length for ids in prompt_token_ids(tokenizer, prompts)
    )

    # When buyers send them all at once, and the evaluation completes them
    served = served_generation(version, max_new_tokens)
    evaluated = evaluation.evaluated_completions(model, tokenizer, prompts, max_new_tokens, "cpu")

    # Then each buyer gets the text the evaluation scored (which strips it)
    assert any(evaluated), "nothing to compare: every answer is empty"
    assert [text.strip() for text in served] == evaluated


def test_tiny_causal_generator_serves_the_greedy_text_its_evaluation_scored(tmp_path):
    path = base_path("tiny-causal")
    _, model = load_tokenizer_and_model(path, None, TEXT_GENERATION)
    built = build_adapter(model, TEXT_GENERATION, tmp_path / "g", seed=21, rank=8)
    rows = generation_rows(24)
    split = draw_sealed_split(rows, task=TEXT_GENERATION, seed=11, fraction=0.25)
    version = Version(
        "tiny-causal", TEXT_GENERATION, path, built.directory,
        dataclasses.replace(built.ref, max_seq_length=24), [rows[i] for i in split.sealed_indices],
    )  # fmt: skip
    check_generation(version, max_new_tokens=8)


@pytest.mark.slow
def test_smollm2_generator_serves_the_greedy_text_its_evaluation_scored(tmp_path):
    """SmolLM2 (135 M parameters) on 12 rows, two optimisation steps: ~30 s on 2 cores."""
    version = train(
        "smollm2-135m-instruct", TEXT_GENERATION, generation_rows(12), tmp_path,
        n_epochs=1, batch_size=8, learning_rate=1e-3, max_seq_length=24,
    )  # fmt: skip
    check_generation(version, max_new_tokens=6)


# --- a combination no migration registers, which the code supports: a decoder classifier


def test_a_decoder_classifier_reads_the_rows_its_evaluation_read(tmp_path):
    """A causal base registered for classification (its head reads the last token): rows
    longer than the version's limit keep their first tokens and their last one, in the
    evaluation and in the engine alike."""
    labels = sorted(TOPICS)
    path = base_path("tiny-causal")
    _, model = load_tokenizer_and_model(
        path, None, TEXT_CLASSIFICATION, num_labels=3, id2label=dict(enumerate(labels))
    )
    built = build_adapter(model, TEXT_CLASSIFICATION, tmp_path / "a", seed=4, labels=labels)
    ref = dataclasses.replace(built.ref, max_seq_length=12)
    texts = [row["text"] for row in classification_rows(2)]

    served = served_classification("tiny-causal", path, ref, texts)

    model, tokenizer = load_adapter_model(path, built.directory, TEXT_CLASSIFICATION, labels)
    assert sum(len(ids) > 12 for ids in tokenizer(texts)["input_ids"]) >= 3
    scored = evaluation.predict_class_probabilities(model, tokenizer, texts, 12, "cpu")
    served_matrix = np.array([[row[label] for label in labels] for row in served])
    np.testing.assert_allclose(served_matrix, scored, atol=1e-5)
