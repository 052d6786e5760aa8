import pytest

from tests.tiny_models import write_tiny_hf_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return write_tiny_hf_model(str(tmp_path_factory.mktemp("tiny-llama")), arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    return write_tiny_hf_model(str(tmp_path_factory.mktemp("tiny-qwen2")), arch="qwen2", tie_word_embeddings=True, seed=1)
