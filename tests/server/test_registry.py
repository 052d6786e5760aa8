"""ModelRegistry: which serving a name reaches, and the 404 / 400 / 503 for the names it cannot serve."""
from __future__ import annotations

import asyncio

import pytest

from server.errors import APIError
from server.registry import CombinedStats, ModelRegistry
from server.serving import OpenAIServing
from tests.server.fake_engine import FakeEngine


class FakeEmbeddingServing:
    served_model_names = ["emb"]

    async def is_healthy(self) -> bool:
        return True

    def model_card(self, name):
        from server.protocol import ModelCard
        return ModelCard(id=name, created=0, max_model_len=256)


def status_of(call) -> tuple[int, str | None]:
    with pytest.raises(APIError) as caught:
        call()
    return caught.value.status_code, caught.value.code


def test_lookups_while_loading_and_loaded():
    registry = ModelRegistry([["a", "a2"], ["b"]], ["emb"])
    assert not registry.is_loaded
    assert status_of(lambda: registry.generation_serving(None)) == (503, None)  # the default, loading
    assert status_of(lambda: registry.generation_serving("b")) == (503, None)  # known: loading, not unknown
    assert status_of(lambda: registry.generation_serving("zz")) == (404, "model_not_found")
    assert status_of(lambda: registry.embedding_serving("emb")) == (503, None)
    assert status_of(registry.list_models) == (503, None)

    serving_a = OpenAIServing(FakeEngine(max_model_len=100), ["a", "a2"])
    serving_b = OpenAIServing(FakeEngine(max_model_len=50), ["b"])
    registry.set_serving(0, serving_a)
    assert registry.generation_serving("a2") is serving_a and registry.generation_serving(None) is serving_a
    assert not registry.is_loaded
    registry.set_serving(1, serving_b)
    registry.embeddings = FakeEmbeddingServing()
    assert registry.is_loaded and asyncio.run(registry.is_healthy())
    assert registry.generation_serving("b") is serving_b
    assert status_of(lambda: registry.generation_serving("emb")) == (400, "model_not_supported")
    assert status_of(lambda: registry.embedding_serving("b")) == (400, "model_not_supported")
    assert registry.embedding_serving("emb") is registry.embeddings
    cards = registry.list_models().data
    assert [(c.id, c.max_model_len) for c in cards] == [("a", 100), ("a2", 100), ("b", 50), ("emb", 256)]
    assert registry.model_card("b").max_model_len == 50 and registry.model_card("emb").id == "emb"
    assert status_of(lambda: registry.model_card("zz")) == (404, "model_not_found")


def test_default_read_from_app_state_and_health():
    holder = {"serving": None}
    registry = ModelRegistry([["x"]], get_default=lambda: holder["serving"])
    assert asyncio.run(registry.is_healthy())  # nothing loaded: alive, not ready
    engine = FakeEngine()
    holder["serving"] = OpenAIServing(engine, ["renamed"])  # what older code sets on app.state.serving
    assert registry.generation_serving("renamed") is holder["serving"] and registry.is_loaded
    holder["serving"].is_engine_dead = True
    assert not asyncio.run(registry.is_healthy())


def test_combined_stats_sum_the_engines():
    one, two = FakeEngine(), FakeEngine()
    stats = CombinedStats([one, two]).stats()
    assert stats["num_total_blocks"] == 200 and stats["num_free_blocks"] == 200
