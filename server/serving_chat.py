"""/v1/chat/completions: messages → chat template → engine request → chat.completion bodies."""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse

from server import protocol_chat as pc
from server.errors import bad_request
from server.serving_chunks import Chunks

if TYPE_CHECKING:
    from server.serving import OpenAIServing


class ChatServing:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving
        self.tokenizer = serving.tokenizer

    def prompt(self, request: pc.ChatCompletionRequest) -> list[int]:
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

    async def create(self, request: pc.ChatCompletionRequest, model: str | None = None):
        serving = self.serving
        model_name = serving.resolve_model(model or request.model)
        prompts = [self.prompt(request)]
        params = serving.check_request(request, prompts, "messages")
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        chunks = ChatChunks(request_id, model_name, params.n, request.include_usage)
        if request.stream:
            return serving.sse(prompts, params, chunks)
        return JSONResponse(await serving.collect(prompts, params, chunks))


class ChatChunks(Chunks):
    def _chunk(self, choices: list[pc.ChatStreamChoice], usage=None) -> dict:
        return pc.ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model,
                                      choices=choices, usage=usage).model_dump()

    def start(self) -> list[dict]:
        # the openai client and chat front ends expect the role first, on its own
        return [self._chunk([pc.ChatStreamChoice(index=i, delta=pc.DeltaMessage(role="assistant", content=""))])
                for i in range(self.n)]

    def text_chunk(self, index: int, text: str) -> dict:
        return self._chunk([pc.ChatStreamChoice(index=index, delta=pc.DeltaMessage(content=text))])

    def finish_chunk(self, index: int, reason: str) -> dict:
        return self._chunk([pc.ChatStreamChoice(index=index, delta=pc.DeltaMessage(), finish_reason=reason)])

    def usage_chunk(self) -> dict:
        return self._chunk([], self.usage())

    def full_response(self) -> dict:
        choices = [pc.ChatChoice(index=i, message=pc.ResponseMessage(content=self.texts[i]),
                                 finish_reason=self.finish_reasons.get(i)) for i in self.indices()]
        return pc.ChatCompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                         choices=choices, usage=self.usage()).model_dump()
