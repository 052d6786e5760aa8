"""/v1/chat/completions: messages → chat template → engine request → chat.completion bodies."""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse

from engine import TokenLogprob
from server import protocol_chat as pc
from server.errors import bad_request
from server.serving_chunks import Chunks
from server.serving_logprobs import TokenStrings, chat_logprobs

if TYPE_CHECKING:
    from server.serving import OpenAIServing


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                continue_final_message: bool = False, template_kwargs: dict | None = None) -> str:
    """The prompt text of ``messages``. ``continue_final_message``: the last (assistant) message
    is left open, so the model continues it rather than starting a new turn."""
    try:
        if continue_final_message and not messages[-1]["content"]:
            # nothing to continue: the same as opening the assistant's turn
            return tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, **(template_kwargs or {}))
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                             **(template_kwargs or {}))
    except ValueError as exc:
        raise bad_request(f"The chat template could not render these messages: {exc}", param="messages")
    if continue_final_message:
        # cut what the template wrote after the final message (its end-of-turn token)
        end = text.rfind(messages[-1]["content"])
        if end < 0:
            raise bad_request("continue_final_message: the chat template does not write the final message "
                              "verbatim, so it cannot be continued.", param="continue_final_message")
        text = text[: end + len(messages[-1]["content"])]
    return text


def template_messages(messages: list[pc.ChatMessage]) -> list[dict]:
    # "developer" is the newer name for "system"; most templates only know the latter
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
             **({"name": m.name} if m.name else {})} for m in messages]


class ChatServing:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving
        self.tokenizer = serving.tokenizer
        self.strings = TokenStrings(self.tokenizer)

    def prompt(self, request: pc.ChatCompletionRequest) -> list[int]:
        text = render_chat(self.tokenizer, template_messages(request.messages), request.is_generation_prompt_added,
                           request.continue_final_message, request.chat_template_kwargs)
        # the template writes the special tokens (BOS, <|im_start|>) itself
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def create(self, request: pc.ChatCompletionRequest, model: str | None = None):
        serving = self.serving
        model_name = serving.resolve_model(model or request.model)
        prompts = [self.prompt(request)]
        params = serving.check_request(request, prompts, "messages")
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        chunks = ChatChunks(request_id, model_name, params.n, request.include_usage, self.strings, params.logprobs)
        if request.stream:
            return serving.sse(prompts, params, chunks)
        return JSONResponse(await serving.collect(prompts, params, chunks))


class ChatChunks(Chunks):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.logprobs: dict[int, list[pc.ChatTokenLogprob]] = {}

    def _chunk(self, choices: list[pc.ChatStreamChoice], usage=None) -> dict:
        return pc.ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model,
                                      choices=choices, usage=usage).model_dump()

    def start(self) -> list[dict]:
        # the openai client and chat front ends expect the role first, on its own
        return [self._chunk([pc.ChatStreamChoice(index=i, delta=pc.DeltaMessage(role="assistant", content=""))])
                for i in range(self.n)]

    def text_chunk(self, index: int, text: str, logprobs: list[TokenLogprob]) -> dict:
        piece = None
        if self.num_logprobs is not None:
            content = chat_logprobs(self.strings, logprobs, self.num_logprobs)
            self.logprobs.setdefault(index, []).extend(content)
            piece = pc.ChatLogprobs(content=content)
        return self._chunk([pc.ChatStreamChoice(index=index, delta=pc.DeltaMessage(content=text), logprobs=piece)])

    def finish_chunk(self, index: int, reason: str) -> dict:
        return self._chunk([pc.ChatStreamChoice(index=index, delta=pc.DeltaMessage(), finish_reason=reason)])

    def usage_chunk(self) -> dict:
        return self._chunk([], self.usage())

    def full_response(self) -> dict:
        choices = [pc.ChatChoice(
            index=i, message=pc.ResponseMessage(content=self.texts[i]), finish_reason=self.finish_reasons.get(i),
            logprobs=pc.ChatLogprobs(content=self.logprobs.get(i, [])) if self.num_logprobs is not None else None)
            for i in self.indices()]
        return pc.ChatCompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                         choices=choices, usage=self.usage()).model_dump()
