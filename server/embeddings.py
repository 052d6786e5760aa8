"""/v1/embeddings: the request model, EmbeddingServing (protocol ↔ engine.Embedder) and the route.

Inputs as OpenAI takes them (a string, strings, token ids, lists of token ids); the vectors
come back as JSON floats or, with ``encoding_format: "base64"``, as base64 of little-endian
float32 bytes (what the ``openai`` client asks for by default and decodes).
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from engine import Embedder, EngineDeadError
from server import protocol as p
from server.admission import current_ticket
from server.errors import APIError, bad_request
from server.routes import with_cancellation

MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_TOTAL_TOKENS = 300_000  # OpenAI's limit summed over a request's inputs

INPUT_SHAPES = ("'input' must be a non-empty string, a list of 1 to 2048 strings, a list of token ids "
                "(non-negative integers), or a list of 1 to 2048 non-empty lists of token ids")


def _is_token_ids(value: object) -> bool:
    # bool is an int to Python, not to JSON
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def check_input(value: object) -> str | list[str] | list[int] | list[list[int]]:
    """One of the four shapes OpenAI takes; a 400 that names them all otherwise (pydantic's
    union errors would name just one branch)."""
    if isinstance(value, str):
        return value
    is_shape = isinstance(value, list) and 1 <= len(value) <= MAX_INPUTS and (
        all(isinstance(v, str) for v in value) or _is_token_ids(value) or all(_is_token_ids(v) for v in value))
    if not is_shape:
        raise PydanticCustomError("invalid_input", INPUT_SHAPES)
    return value


class EmbeddingRequest(p.RequestModel):
    model: str
    input: Annotated[Any, AfterValidator(check_input)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    # vLLM's extension: cut each input to its first k tokens (-1: to the model's limit)
    truncate_prompt_tokens: int | None = Field(None, ge=-1)


class EmbeddingServing:
    """One embedding model behind its names."""

    def __init__(self, embedder: Embedder, served_model_names: list[str]) -> None:
        self.embedder = embedder
        self.served_model_names = served_model_names
        self.created = int(time.time())

    async def is_healthy(self) -> bool:
        return await self.embedder.ping()

    def model_card(self, name: str) -> p.ModelCard:
        return p.ModelCard(id=name, created=self.created, max_model_len=self.embedder.max_model_len, task="embed")

    async def create_embedding(self, request: EmbeddingRequest) -> Response:
        prompts = await self._prompts(request)
        ticket = current_ticket.get()
        if ticket is not None:  # admitted: its estimated tokens are not waiting for a generation prefill
            ticket.dequeue_tokens()
        try:
            vectors = await self.embedder.embed(prompts)  # (N, dimensions) float32, on the worker thread
        except ValueError as exc:  # checked above already; the embedder's own check, to be sure
            raise bad_request(str(exc), param="input") from exc
        except EngineDeadError as exc:  # its thread has stopped (shutting down, or died)
            raise APIError(503, "The embedding model is not running.") from exc
        num_tokens = sum(len(ids) for ids in prompts)
        # tens of thousands of floats: render off the event loop
        body = await asyncio.to_thread(render, vectors.numpy(), request.model, request.encoding_format, num_tokens)
        return Response(body, media_type="application/json")

    async def _prompts(self, request: EmbeddingRequest) -> list[list[int]]:
        embedder, max_len = self.embedder, self.embedder.max_model_len
        if request.dimensions is not None and request.dimensions != embedder.dimensions:
            # OpenAI's text-embedding-3 models were trained so that a prefix of the vector is
            # itself an embedding (Matryoshka); this one was not, so a cut vector would be a
            # worse embedding rather than a shorter one
            raise bad_request(f"This model gives {embedder.dimensions}-dimensional embeddings and cannot shorten "
                              f"them: it was not trained for it (Matryoshka). Omit 'dimensions' or set it to "
                              f"{embedder.dimensions}.", param="dimensions", code="unsupported_parameter")
        truncate_to = request.truncate_prompt_tokens
        if truncate_to == -1:
            truncate_to = max_len
        elif truncate_to is not None and not 1 <= truncate_to <= max_len:
            raise bad_request(f"'truncate_prompt_tokens' must be -1 or 1 to {max_len} (this model's maximum "
                              f"context length); got {truncate_to}.", param="truncate_prompt_tokens")
        data = request.input
        if isinstance(data, str) or isinstance(data[0], str):
            texts = [data] if isinstance(data, str) else data
            if any(not text for text in texts):
                raise bad_request("'input' cannot contain an empty string.", param="input", code="invalid_value")
            prompts = await asyncio.to_thread(embedder.tokenize, texts, truncate_to)
        else:
            prompts = [list(data)] if isinstance(data[0], int) else [list(ids) for ids in data]
            for ids in prompts:
                bad = next((t for t in ids if t >= embedder.vocab_size), None)
                if bad is not None:
                    raise bad_request(f"Token id {bad} is out of range (vocabulary size {embedder.vocab_size}).",
                                      param="input", code="invalid_value")
            if truncate_to is not None:
                prompts = [ids[:truncate_to] for ids in prompts]
        for i, ids in enumerate(prompts):
            if len(ids) > max_len:
                which = "the input" if len(prompts) == 1 else f"input {i}"
                raise bad_request(f"This model's maximum context length is {max_len} tokens. However, {which} "
                                  f"has {len(ids)} tokens. Shorten it, or set 'truncate_prompt_tokens' to cut "
                                  f"inputs to their first tokens.", param="input", code="context_length_exceeded")
        num_tokens = sum(len(ids) for ids in prompts)
        if num_tokens > MAX_TOTAL_TOKENS:
            raise bad_request(f"The inputs have {num_tokens} tokens in all; at most {MAX_TOTAL_TOKENS} are "
                              f"allowed per request.", param="input", code="context_length_exceeded")
        return prompts


def render(vectors: np.ndarray, model: str, encoding_format: str, num_tokens: int) -> bytes:
    """The CreateEmbeddingResponse body. base64: the float32 bytes, little-endian, as OpenAI sends."""
    if encoding_format == "base64":
        rows = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
    else:
        rows = vectors.astype(np.float32).tolist()
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    return json.dumps({"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}}).encode()


router = APIRouter()


@router.post("/v1/embeddings", name="create_embedding")
@with_cancellation
async def create_embedding(body: EmbeddingRequest, raw_request: Request):
    models = raw_request.app.state.models
    if models is None:
        raise APIError(503, "The server is still starting; try again shortly.")
    return await models.embedding_serving(body.model).create_embedding(body)
