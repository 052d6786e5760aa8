"""Protocol ↔ engine: chat templates, token ids, the context check, full responses, SSE chunks.

One ``OpenAIServing`` per app. Each HTTP request becomes one engine request per prompt
(``<id>-<k>``); its ``n`` choices are numbered ``k * n + i`` in the response.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from engine import EngineDeadError, RequestOutput, SamplingParams
from server import protocol as p
from server.generation import Generation
from server.errors import APIError, bad_request
from server.metrics import ServerMetrics

logger = logging.getLogger("gptserve.server")
SSE_PING_SECONDS = 15  # comment lines keep idle streams alive through proxies


class OpenAIServing:
    def __init__(self, engine, served_model_names: list[str],
                 on_engine_dead: Callable[[], None] | None = None, metrics: ServerMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or ServerMetrics(lambda: engine)
        self.served_model_names = served_model_names
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.created = int(time.time())
        self.on_engine_dead = on_engine_dead or (lambda: None)
        self.is_engine_dead = False

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
        return p.ModelCard(id=self.resolve_model(name), created=self.created, max_model_len=self.max_model_len)

    def list_models(self) -> p.ModelList:
        return p.ModelList(data=[self.model_card(name) for name in self.served_model_names])

    # ----- prompts -----

    def _completion_prompts(self, prompt: str | list) -> list[list[int]]:
        if isinstance(prompt, str):
            prompts = [self.tokenizer.encode(prompt, add_special_tokens=True)]
        elif isinstance(prompt[0], str):
            prompts = [self.tokenizer.encode(text, add_special_tokens=True) for text in prompt]
        elif isinstance(prompt[0], int):
            prompts = [list(prompt)]
        else:
            prompts = [list(ids) for ids in prompt]
        vocab_size = self.tokenizer.vocab_size
        for ids in prompts:
            if not ids:
                raise bad_request("The prompt is empty.", param="prompt")
            if max(ids) >= vocab_size:
                raise bad_request(f"Token id {max(ids)} is out of range (vocabulary size {vocab_size}).", param="prompt")
        return prompts

    def _chat_prompt(self, request: p.ChatCompletionRequest) -> list[int]:
        # "developer" is the newer name for "system"; most templates only know the latter
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
                     **({"name": m.name} if m.name else {})} for m in request.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      **(request.chat_template_kwargs or {}))
        except ValueError as exc:
            raise bad_request(f"The chat template could not render these messages: {exc}", param="messages")
        # the template writes the special tokens (BOS, <|im_start|>) itself
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _check_request(self, request: p.SamplingRequest, prompts: list[list[int]], what: str) -> SamplingParams:
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
        vocab_size = self.tokenizer.vocab_size
        for token_id in [*(int(k) for k in (request.logit_bias or {})), *(request.stop_token_ids or [])]:
            if token_id >= vocab_size:
                raise bad_request(f"Token id {token_id} is out of range (vocabulary size {vocab_size}).")
        if self.is_engine_dead:
            raise APIError(503, "The inference engine has stopped; the server is restarting.")
        return request.to_sampling_params(max_tokens)

    # ----- endpoints -----

    async def create_completion(self, request: p.CompletionRequest, model: str | None = None):
        model_name = self.resolve_model(model or request.model)
        prompts = self._completion_prompts(request.prompt)
        params = self._check_request(request, prompts, "prompt")
        request_id = f"cmpl-{uuid.uuid4().hex}"
        chunks = CompletionChunks(request_id, model_name, params.n, request.include_usage)
        if request.stream:
            return self._sse(prompts, params, chunks)
        return JSONResponse(await self._collect(prompts, params, chunks))

    async def create_chat_completion(self, request: p.ChatCompletionRequest, model: str | None = None):
        model_name = self.resolve_model(model or request.model)
        prompts = [self._chat_prompt(request)]
        params = self._check_request(request, prompts, "messages")
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        chunks = ChatChunks(request_id, model_name, params.n, request.include_usage)
        if request.stream:
            return self._sse(prompts, params, chunks)
        return JSONResponse(await self._collect(prompts, params, chunks))

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

    async def _collect(self, prompts: list[list[int]], params: SamplingParams, chunks: "Chunks") -> dict:
        timer = self.metrics.timer()
        generation = Generation(self.engine, prompts, params, chunks.request_id)
        try:
            async for k, out in generation:
                timer.output(k)
                chunks.update(k, out)
        except Exception as exc:
            raise self._engine_error(exc) from exc
        finally:
            await generation.close()
        timer.finished(chunks.finish_reasons)
        return chunks.full_response()

    def _sse(self, prompts: list[list[int]], params: SamplingParams, chunks: "Chunks") -> EventSourceResponse:
        async def events() -> AsyncIterator[dict]:
            timer = self.metrics.timer()
            # started here, not before: a stream that never starts must leave nothing running
            generation = Generation(self.engine, prompts, params, chunks.request_id)
            try:
                for chunk in chunks.start():
                    yield {"data": json.dumps(chunk)}
                async for k, out in generation:
                    timer.output(k)
                    for chunk in chunks.update(k, out):
                        yield {"data": json.dumps(chunk)}
                timer.finished(chunks.finish_reasons)
                for chunk in chunks.end():
                    yield {"data": json.dumps(chunk)}
            except Exception as exc:  # the 200 is sent already: report in-band, as OpenAI does
                error = self._engine_error(exc)
                self.metrics.error(error.status_code, error.type)
                yield {"data": json.dumps(error.body())}
            finally:
                await generation.close()
            yield {"data": "[DONE]"}

        return EventSourceResponse(events(), ping=SSE_PING_SECONDS, sep="\n",
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class Chunks:
    """Accumulates one request's outputs; builds its stream chunks and its full response."""

    def __init__(self, request_id: str, model: str, n: int, include_usage: bool) -> None:
        self.request_id, self.model, self.n, self.include_usage = request_id, model, n, include_usage
        self.created = int(time.time())
        self.texts: dict[int, str] = {}
        self.finish_reasons: dict[int, str] = {}
        self.num_tokens: dict[int, int] = {}
        self.num_prompt_tokens: dict[int, int] = {}
        self.num_cached_tokens: dict[int, int] = {}

    def update(self, k: int, out: RequestOutput) -> list[dict]:
        """Record one engine output of prompt ``k``; return the stream chunks it makes."""
        self.num_prompt_tokens[k] = out.num_prompt_tokens
        self.num_cached_tokens[k] = out.num_cached_tokens
        chunks = []
        for choice in out.outputs:
            index = k * self.n + choice.index
            if index in self.finish_reasons:
                continue  # exactly one finish_reason per choice, whatever the engine repeats
            self.texts[index] = self.texts.get(index, "") + choice.text
            self.num_tokens[index] = choice.num_tokens
            if choice.text:
                chunks.append(self.text_chunk(index, choice.text))
            if choice.finish_reason == "abort":
                raise APIError(503, "The engine aborted the request before it finished.")
            if choice.finish_reason is not None:
                self.finish_reasons[index] = choice.finish_reason
                chunks.append(self.finish_chunk(index, choice.finish_reason))
        return chunks

    def usage(self) -> p.UsageInfo:
        num_prompt = sum(self.num_prompt_tokens.values())
        num_completion = sum(self.num_tokens.values())
        num_cached = sum(self.num_cached_tokens.values())
        details = p.PromptTokensDetails(cached_tokens=num_cached) if num_cached else None
        return p.UsageInfo(prompt_tokens=num_prompt, completion_tokens=num_completion,
                           total_tokens=num_prompt + num_completion, prompt_tokens_details=details)

    def start(self) -> list[dict]:
        return []

    def end(self) -> list[dict]:
        return [self.usage_chunk()] if self.include_usage else []

    def indices(self) -> list[int]:
        return sorted(self.texts)


class CompletionChunks(Chunks):
    def _chunk(self, choices: list[p.CompletionChoice], usage: p.UsageInfo | None = None) -> dict:
        return p.CompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                    choices=choices, usage=usage).model_dump()

    def text_chunk(self, index: int, text: str) -> dict:
        return self._chunk([p.CompletionChoice(index=index, text=text)])

    def finish_chunk(self, index: int, reason: str) -> dict:
        return self._chunk([p.CompletionChoice(index=index, text="", finish_reason=reason)])

    def usage_chunk(self) -> dict:
        return self._chunk([], self.usage())

    def full_response(self) -> dict:
        return self._chunk([p.CompletionChoice(index=i, text=self.texts[i], finish_reason=self.finish_reasons.get(i))
                            for i in self.indices()], self.usage())


class ChatChunks(Chunks):
    def _chunk(self, choices: list[p.ChatStreamChoice], usage: p.UsageInfo | None = None) -> dict:
        return p.ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model,
                                     choices=choices, usage=usage).model_dump()

    def start(self) -> list[dict]:
        # the openai client and chat front ends expect the role first, on its own
        return [self._chunk([p.ChatStreamChoice(index=i, delta=p.DeltaMessage(role="assistant", content=""))])
                for i in range(self.n)]

    def text_chunk(self, index: int, text: str) -> dict:
        return self._chunk([p.ChatStreamChoice(index=index, delta=p.DeltaMessage(content=text))])

    def finish_chunk(self, index: int, reason: str) -> dict:
        return self._chunk([p.ChatStreamChoice(index=index, delta=p.DeltaMessage(), finish_reason=reason)])

    def usage_chunk(self) -> dict:
        return self._chunk([], self.usage())

    def full_response(self) -> dict:
        choices = [p.ChatChoice(index=i, message=p.ResponseMessage(content=self.texts[i]),
                                finish_reason=self.finish_reasons.get(i)) for i in self.indices()]
        return p.ChatCompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                        choices=choices, usage=self.usage()).model_dump()
