from tests.training_worker.conftest import tiny_causal_built  # noqa: F401  (fixture)
