"""Several models from one process: two tiny random chat models (different architectures, seeds
and context lengths, written here) and all-MiniLM-L6-v2; routing by `model`, listing, errors.

Each model's greedy output is checked against an in-process LLMEngine on the same folder, so a
request that reached the wrong engine would fail.
"""
from __future__ import annotations

import re

import httpx
import openai
import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from tests.engine.test_bert import minilm_path
from tests.server.helpers import check_stream, parse_sse
from tests.server_process import running_server
from tests.spec_validator import validate, validate_error
from tests.tiny_models import write_tiny_hf_model

API_KEY = "multi-model-key"
NAMES_A = ["tiny-a", "alias-a"]  # the default model, named with --served-model-name
NAME_B = "tiny-b"  # named with NAME=PATH
EMBEDDING = "minilm"
PROMPT_IDS = [[17, 250, 33, 101, 7, 64], [9, 120, 44, 3, 88]]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    return {
        "a": write_tiny_hf_model(str(tmp_path_factory.mktemp("tiny-a")), arch="llama", seed=11),
        "b": write_tiny_hf_model(str(tmp_path_factory.mktemp("tiny-b")), arch="qwen2", seed=12,
                                 tie_word_embeddings=True, max_position_embeddings=256),
    }


@pytest.fixture(scope="module")
def server_url(folders, tmp_path_factory):
    args = ["--model", folders["a"], "--served-model-name", *NAMES_A, "--model", f"{NAME_B}={folders['b']}",
            "--embedding-model", f"{EMBEDDING}={minilm_path()}", "--kv-cache-memory-gb", "0.05", "--max-num-seqs", "4"]
    log = tmp_path_factory.mktemp("multi-model-server") / "server.log"
    with running_server(args, {"GPTSERVE_API_KEY": API_KEY}, log_path=log) as (url, _proc, log_path):
        yield url
    assert "served as tiny-b" in log_path.read_text()


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server_url):
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def expected(folders) -> dict[str, list[str]]:
    """Greedy texts of each folder's model for PROMPT_IDS, from the engine in this process."""
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    out = {}
    for key, folder in folders.items():
        engine = LLMEngine(EngineConfig(model=folder, num_threads=1, kv_cache_memory_gb=0.02))
        out[key] = [choices[0].text for choices in engine.generate(PROMPT_IDS, params)]
    assert out["a"] != out["b"]
    return out


def complete(http, model: str | None, path: str = "/v1/completions", **extra) -> dict:
    body = {"prompt": PROMPT_IDS, "max_tokens": 8, "temperature": 0, "ignore_eos": True, **extra}
    if model is not None:
        body["model"] = model
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return validate(response.json(), "CreateCompletionResponse")


def test_completions_route_by_model(http, expected):
    for model, key in [("tiny-a", "a"), ("alias-a", "a"), (NAME_B, "b"), (None, "a")]:
        body = complete(http, model)
        assert [c["text"] for c in body["choices"]] == expected[key], model
        assert body["model"] == (model or NAMES_A[0])
    # the legacy route names the model in its path
    legacy = complete(http, None, path=f"/v1/engines/{NAME_B}/completions")
    assert [c["text"] for c in legacy["choices"]] == expected["b"] and legacy["model"] == NAME_B


def test_chat_and_streams_route_by_model(client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    texts = {}
    for model in (NAMES_A[0], NAME_B):
        full = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                              extra_body={"ignore_eos": True})
        assert full.model == model
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True})
        chunks = list(stream)
        assert all(chunk.model == model for chunk in chunks)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == full.choices[0].message.content
        texts[model] = streamed
    assert texts[NAMES_A[0]] != texts[NAME_B]


def test_chat_bodies_and_chunks_follow_the_spec(http):
    for model in (NAMES_A[1], NAME_B):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                "temperature": 0, "ignore_eos": True}
        full = http.post("/v1/chat/completions", json=body)
        assert full.status_code == 200, full.text
        validate(full.json(), "CreateChatCompletionResponse")
        stream = http.post("/v1/chat/completions", json={**body, "stream": True})
        assert stream.status_code == 200, stream.text
        texts = check_stream(parse_sse(stream.text))  # every chunk validated
        assert texts[0] == full.json()["choices"][0]["message"]["content"]
        assert all(chunk["model"] == model for chunk in parse_sse(stream.text)[:-1])


def test_models_lists_every_model(client, http):
    listed = http.get("/v1/models").json()
    validate(listed, "ListModelsResponse")
    assert [m["id"] for m in listed["data"]] == [*NAMES_A, NAME_B, EMBEDDING]
    by_id = {m["id"]: m for m in listed["data"]}
    assert by_id["tiny-a"]["max_model_len"] == 512 and by_id[NAME_B]["max_model_len"] == 256  # one engine each
    assert by_id[EMBEDDING]["max_model_len"] == 256
    assert by_id[EMBEDDING]["task"] == "embed" and by_id[NAME_B]["task"] == "generate"  # the chat page's picker
    for model_id in (*NAMES_A, NAME_B, EMBEDDING):
        card = http.get(f"/v1/models/{model_id}").json()
        assert validate(card, "Model")["id"] == model_id
        assert client.models.retrieve(model_id).id == model_id
    assert [m.id for m in client.models.list()] == [*NAMES_A, NAME_B, EMBEDDING]


def test_unknown_model_is_404_and_embedding_model_is_400(client, http):
    for path, body in [("/v1/completions", {"prompt": "hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/embeddings", {"input": "hi"})]:
        response = http.post(path, json={"model": "gpt-5", **body})
        assert response.status_code == 404, (path, response.text)
        error = validate_error(response.json())["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
    response = http.get("/v1/models/gpt-5")
    assert response.status_code == 404 and validate_error(response.json())["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=EMBEDDING, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_supported"
    validate_error(caught.value.response.json())
    response = http.post(f"/v1/engines/{EMBEDDING}/completions", json={"prompt": "hi"})
    assert response.status_code == 400
    response = http.post("/v1/embeddings", json={"model": NAME_B, "input": "hi"})
    assert response.status_code == 400 and "generates text" in response.json()["error"]["message"]


def test_embeddings_beside_chat_models(client):
    response = client.embeddings.create(model=EMBEDDING, input=["one", "two"])
    assert len(response.data) == 2 and len(response.data[0].embedding) == 384


def test_probes_and_metrics_cover_every_model(server_url, http):
    assert httpx.get(f"{server_url}/ready").status_code == 200
    assert httpx.get(f"{server_url}/health").status_code == 200

    def prompt_tokens_total() -> float:
        text = http.get("/metrics").text
        return float(re.search(r"^gptserve:prompt_tokens_total (\S+)$", text, re.M).group(1))

    before = prompt_tokens_total()
    # fresh prompts (no prefix-cache hits), one to each model
    a = complete(http, "tiny-a", prompt=[[200, 201, 202, 203, 204]])
    b = complete(http, NAME_B, prompt=[[300, 301, 302]])
    assert prompt_tokens_total() - before == a["usage"]["prompt_tokens"] + b["usage"]["prompt_tokens"] == 8


def test_tokenize_routes_by_model(http):
    for model, max_len in [("tiny-a", 512), (NAME_B, 256), (None, 512)]:
        body = {"prompt": "hello", **({"model": model} if model else {})}
        response = http.post("/tokenize", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["max_model_len"] == max_len
    assert http.post("/tokenize", json={"model": "gpt-5", "prompt": "x"}).status_code == 404
