"""/v1/chat/completions: messages → chat template → engine request → chat.completion bodies."""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse

from engine import TokenLogprob
from server import protocol_chat as pc
from server.chat_tokens import SpecialTextGuard
from server.errors import bad_request
from server.serving_chunks import Chunks, json_string
from server.serving_logprobs import TokenStrings, chat_logprobs
from server.tools import ToolCallStream, ToolSettings, merge_call_deltas, parse_tool_calls, render_messages

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
    # "function" messages and function_call are the deprecated forms of "tool" and tool_calls
    roles = {"developer": "system", "function": "tool"}
    return [{"role": roles.get(m.role, m.role), "content": m.text(),
             **({"name": m.name} if m.name else {}),
             **({"tool_calls": [c.model_dump() for c in m.tool_calls]} if m.tool_calls else {}),
             **({"tool_calls": [{"id": "call_0", "type": "function", "function": m.function_call.model_dump()}]}
                if m.function_call and not m.tool_calls else {}),
             **({"tool_call_id": m.tool_call_id} if m.tool_call_id else {})} for m in messages]


def chat_text(tokenizer, request: pc.ChatCompletionRequest, guard: SpecialTextGuard | None = None) -> str:
    """The prompt text of a chat request, tools included (server/tools.py); with ``guard``, the
    special tokens' text in the request's strings comes out marked (server/chat_tokens.py)."""
    knows_tools = "tools" in (getattr(tokenizer, "chat_template", None) or "")
    messages, tools = render_messages(template_messages(request.messages), request.tool_settings(), knows_tools)
    kwargs = {**(request.chat_template_kwargs or {}), **({"tools": tools} if tools else {})}
    if guard is not None:
        messages, kwargs = guard.escape(messages), guard.escape(kwargs)
    return render_chat(tokenizer, messages, request.is_generation_prompt_added, request.continue_final_message, kwargs)


def chat_prompt_ids(tokenizer, request: pc.ChatCompletionRequest, special_tokens_in_messages: bool = False,
                    add_special_tokens: bool = False) -> list[int]:
    """A chat request's prompt token ids. The template writes the special tokens (BOS,
    <|im_start|>) itself; text from the request spells them as plain text unless
    ``special_tokens_in_messages`` (--special-tokens-in-messages, the old behaviour)."""
    if special_tokens_in_messages:
        return tokenizer.encode(chat_text(tokenizer, request), add_special_tokens=add_special_tokens)
    guard = SpecialTextGuard(tokenizer)
    return guard.encode(chat_text(tokenizer, request, guard), add_special_tokens=add_special_tokens)


class ChatServing:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving
        self.tokenizer = serving.tokenizer
        self.strings = TokenStrings(self.tokenizer)

    def prompt(self, request: pc.ChatCompletionRequest, add_special_tokens: bool = False) -> list[int]:
        return chat_prompt_ids(self.tokenizer, request, self.serving.special_tokens_in_messages, add_special_tokens)

    async def create(self, request: pc.ChatCompletionRequest, model: str | None = None):
        serving = self.serving
        model_name = serving.resolve_model(model or request.model)
        prompts = [self.prompt(request)]
        params = serving.check_request(request, prompts, "messages")
        tools = request.tool_settings()
        params.guide = await serving.structured.aguide_for(request, tools.grammar() if tools.is_active else None)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        chunks = ChatChunks(request_id, model_name, params.n, request.include_usage, self.strings, params.logprobs,
                            tools=tools if tools.is_active else None)
        if request.stream:
            return serving.sse(prompts, params, chunks)
        return JSONResponse(await serving.collect(prompts, params, chunks))


class ChatChunks(Chunks):
    def __init__(self, *args, tools: ToolSettings | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.logprobs: dict[int, list[pc.ChatTokenLogprob]] = {}
        self.tools = tools  # parse tool calls out of the text (None: the text is all content)
        self.tool_streams: dict[int, ToolCallStream] = {}

    def update(self, k: int, out) -> list[dict]:
        chunks = super().update(k, out)
        if self.tools is None:
            return chunks
        # text held back by the tool-call parser (a call's "<tool_call>\n{" …) makes no chunk
        return [c for c in chunks if any(ch["delta"] or ch["logprobs"] or ch["finish_reason"] for ch in c["choices"])]

    def _delta(self, index: int, text: str, finish_reason: str | None = None) -> pc.DeltaMessage:
        """Text → delta; with tools, the text goes through the choice's tool-call parser."""
        if self.tools is None:
            return pc.DeltaMessage(content=text or None)
        stream = self.tool_streams.setdefault(index, ToolCallStream(self.tools.names))
        content, calls = stream.finish(finish_reason == "length") if finish_reason else stream.feed(text)
        if not self.tools.parallel:  # parallel_tool_calls false: a second call is dropped
            calls = [c for c in calls if c["index"] == 0]
        calls = merge_call_deltas(calls)
        if self.tools.legacy_functions:  # one call, as delta.function_call pieces
            pieces = [c["function"] for c in calls if c["index"] == 0]
            function_call = pc.FunctionCallDelta(name=next((p["name"] for p in pieces if "name" in p), None),
                                                 arguments="".join(p["arguments"] for p in pieces)) if pieces else None
            return pc.DeltaMessage(content=content or None, function_call=function_call)
        return pc.DeltaMessage(content=content or None,
                               tool_calls=[pc.ToolCallDelta.model_validate(c) for c in calls] or None)

    def _finish_reason(self, index: int, reason: str, num_calls: int) -> str:
        if not num_calls or reason != "stop":
            return reason
        return "function_call" if self.tools.legacy_functions else "tool_calls"

    def _chunk(self, choices: list[pc.ChatStreamChoice], usage=None) -> dict:
        return pc.ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model,
                                      choices=choices, usage=usage).model_dump()

    def start(self) -> list[dict]:
        # the openai client and chat front ends expect the role first, on its own; with tools
        # its content is null, so a tool-call-only answer streams as null content, as it is whole
        chunks = [self._chunk([pc.ChatStreamChoice(index=i, delta=pc.DeltaMessage(role="assistant", content=""))])
                  for i in range(self.n)]
        if self.tools is not None:
            for chunk in chunks:
                chunk["choices"][0]["delta"]["content"] = None
        return chunks

    def text_chunk(self, index: int, text: str, logprobs: list[TokenLogprob]) -> dict | str:
        if self.num_logprobs is None and self.tools is None:
            # the hot path: the JSON text of the chunk built below, written directly
            return (f'{self.chunk_head("chat.completion.chunk")}{{"index": {index}, "delta": {{"content": '
                    f'{json_string(text)}}}, "logprobs": null, "finish_reason": null}}]}}')
        piece = None
        if self.num_logprobs is not None:
            content = chat_logprobs(self.strings, logprobs, self.num_logprobs)
            self.logprobs.setdefault(index, []).extend(content)
            piece = pc.ChatLogprobs(content=content)
        delta = pc.DeltaMessage(content=text) if self.tools is None else self._delta(index, text)
        return self._chunk([pc.ChatStreamChoice(index=index, delta=delta, logprobs=piece)])

    def finish_chunk(self, index: int, reason: str) -> dict:
        delta = self._delta(index, "", finish_reason=reason) if self.tools is not None else pc.DeltaMessage()
        stream = self.tool_streams.get(index)
        reason = self._finish_reason(index, reason, stream.num_calls if stream else 0)
        return self._chunk([pc.ChatStreamChoice(index=index, delta=delta, finish_reason=reason)])

    def message(self, index: int) -> tuple[pc.ResponseMessage, str | None]:
        """A finished choice's message, tool calls parsed out, and its finish_reason."""
        text, reason = self.texts[index], self.finish_reasons.get(index)
        if self.tools is None:
            return pc.ResponseMessage(content=text), reason
        content, calls = parse_tool_calls(text, self.tools.names, reason == "length")
        calls = calls if self.tools.parallel else calls[:1]
        reason = self._finish_reason(index, reason, len(calls))
        if self.tools.legacy_functions:
            function_call = pc.FunctionCall(name=calls[0]["name"], arguments=calls[0]["arguments"]) if calls else None
            return pc.ResponseMessage(content=content, function_call=function_call), reason
        tool_calls = [pc.ToolCall(id=c["id"], function={"name": c["name"], "arguments": c["arguments"]})
                      for c in calls]
        return pc.ResponseMessage(content=content, tool_calls=tool_calls or None), reason

    def usage_chunk(self) -> dict:
        return self._chunk([], self.usage())

    def full_response(self) -> dict:
        choices = [pc.ChatChoice(
            index=i, message=message, finish_reason=reason,
            logprobs=pc.ChatLogprobs(content=self.logprobs.get(i, [])) if self.num_logprobs is not None else None)
            for i in self.indices() for message, reason in [self.message(i)]]
        return pc.ChatCompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                         choices=choices, usage=self.usage()).model_dump()
