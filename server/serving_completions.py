"""/v1/completions: prompts (text, token ids, batches) → engine requests → text_completion bodies."""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse

from server import protocol_completions as pc
from server.errors import bad_request
from server.serving_chunks import Chunks

if TYPE_CHECKING:
    from server.serving import OpenAIServing


class CompletionServing:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving
        self.tokenizer = serving.tokenizer

    def prompts(self, prompt: str | list) -> list[list[int]]:
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

    async def create(self, request: pc.CompletionRequest, model: str | None = None):
        serving = self.serving
        model_name = serving.resolve_model(model or request.model)
        prompts = self.prompts(request.prompt)
        params = serving.check_request(request, prompts, "prompt")
        request_id = f"cmpl-{uuid.uuid4().hex}"
        chunks = CompletionChunks(request_id, model_name, params.n, request.include_usage)
        if request.stream:
            return serving.sse(prompts, params, chunks)
        return JSONResponse(await serving.collect(prompts, params, chunks))


class CompletionChunks(Chunks):
    def _chunk(self, choices: list[pc.CompletionChoice], usage=None) -> dict:
        return pc.CompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                     choices=choices, usage=usage).model_dump()

    def text_chunk(self, index: int, text: str) -> dict:
        return self._chunk([pc.CompletionChoice(index=index, text=text)])

    def finish_chunk(self, index: int, reason: str) -> dict:
        return self._chunk([pc.CompletionChoice(index=index, text="", finish_reason=reason)])

    def usage_chunk(self) -> dict:
        return self._chunk([], self.usage())

    def full_response(self) -> dict:
        return self._chunk([pc.CompletionChoice(index=i, text=self.texts[i], finish_reason=self.finish_reasons.get(i))
                            for i in self.indices()], self.usage())
