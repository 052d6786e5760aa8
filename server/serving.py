"""Protocol ↔ engine, the shared part: models, the request checks, JSON and SSE plumbing.

One ``OpenAIServing`` per app; the endpoints live in serving_completions.py and
serving_chat.py. Each HTTP request becomes one engine request per prompt (``<id>-<k>``);
its ``n`` choices are numbered ``k * n + i`` in the response.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from engine import EngineDeadError, SamplingParams
from server import protocol as p
from server.auth import current_cache_salt
from server.errors import APIError, bad_request
from server.generation import Generation
from server.metrics import ServerMetrics
from server.protocol_chat import ChatCompletionRequest
from server.protocol_completions import CompletionRequest
from server.reasoning import reasoning_parser_for
from server.tool_formats import tool_format_for
from server.request_limits import RequestLimits
from server.serving_chat import ChatServing
from server.serving_chunks import Chunks
from server.serving_completions import CompletionServing
from server.structured import StructuredOutput

logger = logging.getLogger("gptserve.server")
SSE_PING_SECONDS = 15  # comment lines keep idle streams alive through proxies


class OpenAIServing:
    def __init__(self, engine, served_model_names: list[str],
                 on_engine_dead: Callable[[], None] | None = None, metrics: ServerMetrics | None = None,
                 reasoning_parser: str = "auto", limits: RequestLimits | None = None,
                 special_tokens_in_messages: bool = False) -> None:
        self.engine = engine
        self.limits = limits or RequestLimits()
        self.special_tokens_in_messages = special_tokens_in_messages  # see serving_chat.chat_prompt_ids
        self.metrics = metrics or ServerMetrics(lambda: engine)
        self.served_model_names = served_model_names
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        # the model's logits' width: token ids the sampler may index (a tokenizer can be larger)
        self.vocab_size = getattr(getattr(engine, "model_config", None), "vocab_size", None) or self.tokenizer.vocab_size
        self.created = int(time.time())
        self.on_engine_dead = on_engine_dead or (lambda: None)
        self.is_engine_dead = False
        self.completion = CompletionServing(self)
        self.chat = ChatServing(self)
        # grammars for structured output and tools, cached up to a byte budget
        self.structured = StructuredOutput.for_engine(engine, max_bytes=self.limits.grammar_cache_bytes)
        # the <think> parser for a reasoning model (server/reasoning.py), None for the others
        self.reasoning_parser = reasoning_parser_for(reasoning_parser, getattr(self.tokenizer, "chat_template", None))
        # how the model writes tool calls, from its template (server/tool_formats.py)
        self.tool_format = tool_format_for(getattr(self.tokenizer, "chat_template", None))

    async def is_healthy(self) -> bool:
        """The engine loop answers (a hung or dead loop does not)."""
        if self.is_engine_dead:
            return False
        ping = getattr(self.engine, "ping", None)
        return True if ping is None else await ping(timeout=2.0)

    # ----- models -----

    def resolve_model(self, requested: str | None) -> str:
        """The name to echo back; any served name resolves, an omitted one is the first."""
        if requested is None:
            return self.served_model_names[0]
        if requested not in self.served_model_names:
            raise APIError(404, f"The model '{requested}' does not exist.", param="model", code="model_not_found")
        return requested

    def model_card(self, name: str) -> p.ModelCard:
        config = getattr(self.engine, "model_config", None)
        return p.ModelCard(id=self.resolve_model(name), created=self.created, max_model_len=self.max_model_len,
                           architecture=getattr(config, "architecture", None),
                           quantization=getattr(self.engine, "quantization", None),
                           context_length=self.max_model_len, reasoning=self.reasoning_parser is not None,
                           reasoning_parser=self.reasoning_parser)

    def list_models(self) -> p.ModelList:
        return p.ModelList(data=[self.model_card(name) for name in self.served_model_names])

    # ----- shared checks -----

    def check_request(self, request: p.SamplingRequest, prompts: list[list[int]], what: str) -> SamplingParams:
        bad = request.unsupported_fields()
        if bad:
            raise bad_request(f"Not supported yet: {', '.join(bad)}.", param=bad[0], code="unsupported_parameter")
        max_tokens = request.requested_max_tokens()
        for ids in prompts:
            wanted = len(ids) + (max_tokens or 1)
            if wanted > self.max_model_len:
                detail = f" and {max_tokens} for the completion" if max_tokens else ""
                raise bad_request(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                    f"requested {wanted} tokens ({len(ids)} in the {what}{detail}). Please reduce the "
                    f"length of the {what} or the completion.",
                    param="max_tokens" if max_tokens and len(ids) < self.max_model_len else what,
                    code="context_length_exceeded")
        vocab_size = self.vocab_size
        for token_id in [*(int(k) for k in (request.logit_bias or {})), *(request.stop_token_ids or [])]:
            if not 0 <= token_id < vocab_size:
                raise bad_request(f"Token id {token_id} is out of range (the model's vocabulary size is {vocab_size}).",
                                  param="logit_bias" if str(token_id) in (request.logit_bias or {}) else "stop_token_ids")
        if self.is_engine_dead:
            raise APIError(503, "The inference engine has stopped; the server is restarting.")
        params = request.to_sampling_params(max_tokens)
        self.limits.check(prompts, params, self.max_model_len)
        params.cache_salt = current_cache_salt.get()  # each API key its own prefix cache (server/auth.py)
        return params

    # ----- endpoints -----

    async def create_completion(self, request: CompletionRequest, model: str | None = None):
        return await self.completion.create(request, model)

    async def create_chat_completion(self, request: ChatCompletionRequest, model: str | None = None):
        return await self.chat.create(request, model)

    # ----- plumbing -----

    def _engine_error(self, exc: Exception) -> APIError:
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, EngineDeadError):
            self.is_engine_dead = True
            self.on_engine_dead()
            return APIError(503, "The inference engine has stopped; the server is restarting.")
        if isinstance(exc, ValueError):  # the engine's own request check (before anything ran)
            return bad_request(str(exc))
        logger.error("engine error: %r", exc, exc_info=exc)
        return APIError(500, "The server had an error while generating the response.")

    async def run(self, prompts: list[list[int]], params: SamplingParams, chunks: Chunks) -> None:
        """Generate to the end, every output recorded in ``chunks``."""
        timer = self.metrics.timer()
        generation = Generation(self.engine, prompts, params, chunks.request_id)
        try:
            async for k, out in generation:
                timer.output(k)
                if chunks.is_heavy(k, out):  # an echoed prompt's logprobs: built off the event loop
                    await asyncio.to_thread(chunks.update, k, out)
                else:
                    chunks.update(k, out)
        except Exception as exc:
            raise self._engine_error(exc) from exc
        finally:
            await generation.close()
        timer.finished(chunks.finish_reasons)

    async def respond(self, prompts: list[list[int]], params: SamplingParams, chunks: Chunks) -> JSONResponse:
        """The full (not streamed) response. With logprobs it can be megabytes: built and
        rendered on a worker thread, so the event loop keeps serving everyone else."""
        await self.run(prompts, params, chunks)
        if chunks.num_logprobs is None:
            return JSONResponse(chunks.full_response())
        return await asyncio.to_thread(lambda: JSONResponse(chunks.full_response()))

    def sse(self, prompts: list[list[int]], params: SamplingParams, chunks: Chunks) -> EventSourceResponse:
        async def events() -> AsyncIterator[bytes]:
            timer = self.metrics.timer()
            # started here, not before: a stream that never starts must leave nothing running
            generation = Generation(self.engine, prompts, params, chunks.request_id)
            try:
                start = chunks.start()
                if start:
                    yield sse_event(start)
                async for k, out in generation:
                    timer.output(k)
                    if chunks.is_heavy(k, out):  # an echoed prompt's logprobs: built off the event loop
                        yield await asyncio.to_thread(lambda: sse_event(chunks.update(k, out)))
                        continue
                    made = chunks.update(k, out)
                    if made:
                        yield sse_event(made)
                timer.finished(chunks.finish_reasons)
                end = chunks.end()
                if end:
                    yield sse_event(end)
            except Exception as exc:  # the 200 is sent already: report in-band, as OpenAI does
                error = self._engine_error(exc)
                self.metrics.error(error.status_code, error.type)
                yield sse_event([error.body()])
            finally:
                await generation.close()
            yield SSE_DONE

        return SSEResponse(events(), ping=SSE_PING_SECONDS, sep="\n",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


SSE_DONE = b"data: [DONE]\n\n"


def sse_event(chunks: list[dict | str]) -> bytes:
    """Stream chunks (dicts, or JSON text already) as SSE events, one ``data:`` line each, in one
    piece of bytes: what sse-starlette's ``{"data": json.dumps(chunk)}`` with sep "\\n" encodes to
    (JSON text never holds a raw line break)."""
    return "".join([f"data: {c if c.__class__ is str else json.dumps(c)}\n\n" for c in chunks]).encode()


class SSEResponse(EventSourceResponse):
    """EventSourceResponse (pings, client disconnect, shutdown) without a cancel scope per event
    when there is no send timeout: the scope cost more than the send itself."""

    async def _send_with_timeout(self, send, message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)
