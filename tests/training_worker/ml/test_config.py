"""LoraHyperparameters: validation names the parameter, unknown keys are refused, auto values."""

import dataclasses

import pytest

from training_worker.ml.config import LoraHyperparameters, auto_max_seq_length


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("n_epochs", 0),
        ("n_epochs", 51),
        ("n_epochs", 2.5),
        ("batch_size", 0),
        ("learning_rate", 0.0),
        ("learning_rate", 1.0),
        ("learning_rate", float("nan")),
        ("lora_r", 0),
        ("lora_r", 257),
        ("lora_alpha", 0),
        ("lora_dropout", 1.0),
        ("lora_dropout", -0.1),
        ("max_seq_length", 7),
        ("max_seq_length", 4097),
        ("target_modules", []),
        ("target_modules", "query"),
        ("warmup_ratio", 0.9),
        ("bias", "some"),
        ("n_epochs", True),
    ],
)
def test_out_of_range_value_raises_value_error_naming_the_parameter(parameter, value):
    with pytest.raises(ValueError, match=rf"^{parameter}"):
        LoraHyperparameters(**{parameter: value})


def test_from_dict_rejects_unknown_keys_and_names_them():
    with pytest.raises(ValueError, match=r"epochs.*learning_rte"):
        LoraHyperparameters.from_dict({"epochs": 3, "learning_rte": 0.1, "lora_r": 4})


def test_from_dict_accepts_known_keys_and_empty_input():
    assert LoraHyperparameters.from_dict({"n_epochs": 3, "lora_r": 4}).lora_r == 4
    assert LoraHyperparameters.from_dict(None) == LoraHyperparameters()


def test_every_field_has_help_text():
    for field in dataclasses.fields(LoraHyperparameters):
        assert field.metadata.get("help"), field.name


def test_auto_resolution_picks_concrete_values_by_data_size_and_architecture():
    lengths = list(range(1, 101))  # 95th percentile = 95 -> rounded up to 96
    resolved = LoraHyperparameters().resolve("text-classification", lengths, 2000, "bert")
    assert resolved.n_epochs == 3
    assert resolved.max_seq_length == 96
    assert resolved.target_modules == ["query", "value"]
    assert resolved.batch_size == 16
    assert resolved.lora_alpha == 2 * resolved.lora_r
    assert all(value is not None for value in resolved.as_dict().values())


def test_auto_epochs_are_clamped_for_tiny_and_huge_datasets():
    hyperparameters = LoraHyperparameters()
    assert hyperparameters.resolve("text-classification", [10], 50, "bert").n_epochs == 10
    assert hyperparameters.resolve("text-classification", [10], 100_000, "bert").n_epochs == 2


def test_auto_epochs_shrink_when_long_rows_would_pass_the_token_budget():
    hyperparameters = LoraHyperparameters()
    # 1,800 rows of 80 tokens (SOTU-like): 144,000 tokens an epoch, the examples budget rules.
    assert hyperparameters.resolve("text-classification", [80] * 1800, 1800, "bert").n_epochs == 3
    # 1,000 rows cut to 128 tokens: 6 epochs (examples) would be 768,000 tokens -> 5 epochs.
    resolved = hyperparameters.resolve("text-classification", [400] * 1000, 1000, "bert")
    assert (resolved.max_seq_length, resolved.n_epochs) == (128, 5)
    # Tokens count after truncation: an explicit max_seq_length 32 makes the same rows short.
    short = LoraHyperparameters(max_seq_length=32).resolve(
        "text-classification", [400] * 1000, 1000, "bert"
    )
    assert short.n_epochs == 6
    # Never below the minimum, and an explicit n_epochs is kept as given.
    assert hyperparameters.resolve("text-generation", [256] * 5000, 5000, "llama").n_epochs == 2
    explicit = LoraHyperparameters(n_epochs=9).resolve(
        "text-classification", [400] * 1000, 1000, "bert"
    )
    assert explicit.n_epochs == 9


def test_generation_has_its_own_smaller_token_budget():
    hyperparameters = LoraHyperparameters()
    # 1,800 ARPAbet rows of ~25 tokens: 45,000 an epoch; 135,000 tokens -> 3 epochs, where
    # the classification budget would have allowed the examples budget's 3 as well...
    assert hyperparameters.resolve("text-generation", [25] * 1800, 1800, "llama").n_epochs == 3
    # ... but 1,080 sentence rows of 60 tokens: 64,800 an epoch -> 2.1 -> 2 epochs for
    # generation, 6 (examples) for a classifier reading as many tokens.
    assert hyperparameters.resolve("text-generation", [60] * 1080, 1080, "llama").n_epochs == 2
    assert hyperparameters.resolve("text-classification", [60] * 1080, 1080, "bert").n_epochs == 6


def test_auto_max_seq_length_is_a_capped_multiple_of_eight():
    assert auto_max_seq_length("text-classification", [3, 4, 5]) == 16
    assert auto_max_seq_length("text-classification", [1000] * 20) == 128
    assert auto_max_seq_length("text-generation", [1000] * 20) == 256
    assert auto_max_seq_length("text-classification", [20] * 19 + [500]) == 24


def test_explicit_values_win_over_auto_and_llama_gets_its_own_targets():
    hyperparameters = LoraHyperparameters(n_epochs=4, batch_size=8, learning_rate=0.01)
    resolved = hyperparameters.resolve("text-generation", [30] * 10, 10, "llama")
    assert (resolved.n_epochs, resolved.batch_size, resolved.learning_rate) == (4, 8, 0.01)
    # Generation adapts every linear layer of the decoder; classification attention q/v.
    assert resolved.target_modules == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]  # fmt: skip
    classifier = hyperparameters.resolve("text-classification", [30] * 10, 10, "llama")
    assert classifier.target_modules == ["q_proj", "v_proj"]


def test_unknown_architecture_without_target_modules_names_the_parameter():
    with pytest.raises(ValueError, match="target_modules"):
        LoraHyperparameters().resolve("text-classification", [10], 10, "mystery")


def test_resolved_hyperparameters_are_frozen():
    resolved = LoraHyperparameters().resolve("text-classification", [10], 10, "bert")
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.n_epochs = 1
