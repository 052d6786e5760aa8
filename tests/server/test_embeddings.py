"""/v1/embeddings over a FakeEmbedder: exact float / base64 bodies, admission bookkeeping, errors."""
from __future__ import annotations

import asyncio
import base64
import struct

import httpx
import numpy as np
import pytest
import torch

from server import admission
from server.embeddings import EmbeddingServing, render
from tests.server.conftest import make_client
from tests.server.fake_engine import FakeEngine
from tests.spec_validator import validate, validate_error


class FakeEmbedder:
    """Token ids are bytes + 3 (as FakeTokenizer's); the vector of an input is [len, sum, 0.1]."""

    dimensions = 3
    max_model_len = 8
    vocab_size = 259

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[list[list[int]]] = []

    def tokenize(self, texts, truncate_to=None):
        ids = [[b + 3 for b in text.encode()] for text in texts]
        return [x[:truncate_to] if truncate_to else x for x in ids]

    async def ping(self) -> bool:
        return True

    async def embed(self, prompts):
        self.calls.append(prompts)
        await asyncio.sleep(self.delay)
        return torch.tensor([[len(p), sum(p), 0.1] for p in prompts], dtype=torch.float32)


def serve_embeddings(app, embedder) -> None:
    app.state.models.embedding_names = ["emb"]
    app.state.models.embeddings = EmbeddingServing(embedder, ["emb"])


@pytest.fixture
def client_and_embedder(fake_engine, monkeypatch):
    for var in ("GPTSERVE_API_KEY", "GPTSERVE_SERVED_MODEL_NAME", "GPTSERVE_MODEL", "GPTSERVE_EMBEDDING_MODEL"):
        monkeypatch.delenv(var, raising=False)
    embedder = FakeEmbedder()
    with make_client(fake_engine) as client:
        serve_embeddings(client.app, embedder)
        yield client, embedder


def test_float_and_base64_bodies_are_exact(client_and_embedder):
    client, embedder = client_and_embedder
    floats = client.post("/v1/embeddings", json={"model": "emb", "input": ["ab", "c"]}).json()
    validate(floats, "CreateEmbeddingResponse")
    assert floats["data"] == [{"object": "embedding", "index": 0, "embedding": [2.0, 201.0, np.float32(0.1).item()]},
                              {"object": "embedding", "index": 1, "embedding": [1.0, 102.0, np.float32(0.1).item()]}]
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3} and floats["model"] == "emb"
    b64 = client.post("/v1/embeddings", json={"model": "emb", "input": [[5, 6], [7]], "encoding_format": "base64"})
    raw = base64.b64decode(b64.json()["data"][0]["embedding"])
    assert raw == struct.pack("<3f", 2.0, 11.0, 0.1)  # little-endian float32, byte for byte
    assert embedder.calls[-1] == [[5, 6], [7]]


def test_render_is_independent_of_host_byte_order():
    vectors = np.array([[1.5, -2.0]], dtype=">f4")  # big-endian in memory
    body = render(vectors, "m", "base64", 1)
    assert b'"' + base64.b64encode(struct.pack("<2f", 1.5, -2.0)) + b'"' in body


def test_errors(client_and_embedder):
    client, _ = client_and_embedder
    cases = [({"input": "x" * 9}, "context_length_exceeded"), ({"input": [300]}, "invalid_value"),
             ({"input": "x", "dimensions": 2}, "unsupported_parameter")]
    for body, code in cases:
        response = client.post("/v1/embeddings", json={"model": "emb", **body})
        assert response.status_code == 400 and validate_error(response.json())["error"]["code"] == code, response.text
    assert client.post("/v1/embeddings", json={"model": "emb", "input": "x" * 9, "truncate_prompt_tokens": -1}
                       ).json()["usage"]["prompt_tokens"] == 8
    response = client.post("/v1/embeddings", json={"model": "SmolLM2-135M-Instruct", "input": "x"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "model_not_supported"


def test_admitted_embeddings_leave_no_queued_tokens(monkeypatch):
    """Were /v1/embeddings under admission, its estimated prompt tokens would not stay counted as
    waiting for a generation prefill while the vectors are computed."""
    monkeypatch.setattr(admission, "GENERATION_ROUTE_NAMES", admission.GENERATION_ROUTE_NAMES | {"create_embedding"})
    embedder = FakeEmbedder(delay=0.2)
    from server.app import create_app
    from server.settings import Settings
    app = create_app(Settings(_env_file=None), engine=FakeEngine())
    serve_embeddings(app, embedder)

    async def main():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                # a 4 kB body: admission estimates ~1000 prompt tokens before reading it
                body = {"model": "emb", "input": "xy", "user": "u" * 4000}
                task = asyncio.create_task(client.post("/v1/embeddings", json=body))
                while not embedder.calls:
                    await asyncio.sleep(0.01)
                queued_while_embedding = app.state.admission.num_queued_tokens
                in_flight = app.state.admission.num_in_flight
                response = await task
        return response, queued_while_embedding, in_flight

    response, queued_while_embedding, in_flight = asyncio.run(main())
    assert response.status_code == 200, response.text
    assert in_flight == 1 and queued_while_embedding == 0
    assert app.state.admission.num_queued_tokens == 0 and app.state.admission.num_in_flight == 0
