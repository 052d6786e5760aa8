"""/v1/chat/completions: messages → chat template → engine request → chat.completion bodies."""
from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING


from engine import TokenLogprob
from server import protocol_chat as pc
from server.chat_tokens import SpecialTextGuard
from server.errors import bad_request
from server.protocol import CompletionTokensDetails, UsageInfo
from server.reasoning import ReasoningStream, split_reasoning, starts_in_thinking, thinking_kwargs
from server.serving_chunks import Chunks, json_string
from server.serving_logprobs import TokenStrings, chat_logprobs
from server.tool_formats import parse_calls, tool_stream
from server.tools import ToolSettings, merge_call_deltas, render_messages

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
             **({"tool_call_id": m.tool_call_id} if m.tool_call_id else {}),
             **({"reasoning_content": m.reasoning_content or m.reasoning}
                if m.role == "assistant" and (m.reasoning_content or m.reasoning) else {})} for m in messages]


def chat_text(tokenizer, request: pc.ChatCompletionRequest, guard: SpecialTextGuard | None = None) -> str:
    """The prompt text of a chat request, tools included (server/tools.py); reasoning_effort
    onto the template's thinking switch where it has one (server/reasoning.py); with ``guard``,
    the special tokens' text in the request's strings comes out marked (server/chat_tokens.py)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    messages, tools = render_messages(template_messages(request.messages), request.tool_settings(), "tools" in template)
    kwargs = thinking_kwargs(template, request.reasoning_effort, request.chat_template_kwargs or {})
    kwargs = {**kwargs, **({"tools": tools} if tools else {})}
    if guard is not None:
        messages, kwargs = guard.escape(messages), guard.escape(kwargs)
    return render_chat(tokenizer, messages, request.is_generation_prompt_added, request.continue_final_message, kwargs)


def chat_prompt(tokenizer, request: pc.ChatCompletionRequest, special_tokens_in_messages: bool = False,
                add_special_tokens: bool = False) -> tuple[str, list[int]]:
    """A chat request's prompt text and token ids. The template writes the special tokens (BOS,
    <|im_start|>) itself; text from the request spells them as plain text unless
    ``special_tokens_in_messages`` (--special-tokens-in-messages, the old behaviour)."""
    if special_tokens_in_messages:
        text = chat_text(tokenizer, request)
        return text, tokenizer.encode(text, add_special_tokens=add_special_tokens)
    guard = SpecialTextGuard(tokenizer)
    text = chat_text(tokenizer, request, guard)
    return text, guard.encode(text, add_special_tokens=add_special_tokens)


class ChatServing:
    def __init__(self, serving: OpenAIServing) -> None:
        self.serving = serving
        self.tokenizer = serving.tokenizer
        self.strings = TokenStrings(self.tokenizer)

    def prompt(self, request: pc.ChatCompletionRequest, add_special_tokens: bool = False) -> tuple[str, list[int]]:
        """(prompt text, token ids); see chat_prompt."""
        return chat_prompt(self.tokenizer, request, self.serving.special_tokens_in_messages, add_special_tokens)

    async def prepare(self, request: pc.ChatCompletionRequest, what: str = "messages"):
        """What every chat-shaped endpoint (chat, /v1/responses, /v1/messages) does before generating:
        (prompts, params, tools, reasoning) — the prompt's token ids (template, tools), the checked
        sampling params with the request's guide (structured output, forced calls), the tools, and
        ``reasoning`` for ChatChunks (None: the model does not reason; else whether the output
        begins inside the thinking). ``what``: the request field named by prompt errors."""
        serving = self.serving
        parser = serving.reasoning_parser
        if parser is None and request.reasoning_effort not in (None, "none"):
            raise bad_request("Not supported yet: reasoning_effort (this model does not reason apart from its "
                              "answer).", param="reasoning_effort", code="unsupported_parameter")
        text, ids = await asyncio.to_thread(self.prompt, request)  # templating and tokenizing: off the event loop
        prompts = [ids]
        params = serving.check_request(request, prompts, what)
        tools = request.tool_settings()
        tools.format = serving.tool_format
        # a reasoning model thinks first: grammars (structured output, forced tool calls) hold after </think>
        is_thinking = parser is not None and starts_in_thinking(text)
        thinking = None if parser is None else "inside" if is_thinking else "may_open"
        params.guide = await serving.structured.aguide_for(request, tools.grammar() if tools.is_active else None,
                                                           thinking)
        return prompts, params, tools, (None if parser is None else is_thinking)

    async def create(self, request: pc.ChatCompletionRequest, model: str | None = None):
        serving = self.serving
        model_name = serving.resolve_model(model or request.model)
        prompts, params, tools, reasoning = await self.prepare(request)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        chunks = ChatChunks(request_id, model_name, params.n, request.include_usage, self.strings, params.logprobs,
                            tools=tools if tools.is_active else None, reasoning=reasoning)
        if request.stream:
            return serving.sse(prompts, params, chunks)
        return await serving.respond(prompts, params, chunks)


class ChatChunks(Chunks):
    """``tools``: parse tool calls out of the answer (None: the text is all content).
    ``reasoning``: None for a model that does not reason; else whether the output begins
    inside the thinking (the prompt left <think> open), and the thinking is split off."""

    def __init__(self, *args, tools: ToolSettings | None = None, reasoning: bool | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.logprobs: dict[int, list[pc.ChatTokenLogprob]] = {}
        self.tools = tools
        self.tool_streams: dict = {}  # index → ToolCallStream or JSONToolCallStream
        self.reasoning = reasoning
        self.reasoning_streams: dict[int, ReasoningStream] = {}
        self.is_parsed = tools is not None or reasoning is not None  # not the hot path's plain text

    def update(self, k: int, out) -> list[dict]:
        chunks = super().update(k, out)
        if not self.is_parsed:
            return chunks
        # text held back by a parser (a call's "<tool_call>\n{", a "</thi" …) makes no chunk (None, or an empty delta)
        return [c for c in chunks if c is not None and (c.__class__ is str or any(
            ch["delta"] or ch["logprobs"] or ch["finish_reason"] for ch in c["choices"]))]

    def _delta(self, index: int, text: str, finish_reason: str | None = None) -> pc.DeltaMessage:
        """Text → delta: the thinking split off first, then tool calls parsed out of the answer.
        ``finish_reason``: the choice ends here (a call cut by "length" is dropped)."""
        thought = None
        if self.reasoning is not None:
            thought, text = self._split(index, text, finish_reason is not None)
            thought = thought or None
        if self.tools is None:
            return pc.DeltaMessage(content=text or None, reasoning_content=thought, reasoning=thought)
        stream = self.tool_streams.get(index) or self.tool_streams.setdefault(index, tool_stream(self.tools))
        content, calls = stream.feed(text)
        if finish_reason:
            rest, more = stream.finish(finish_reason == "length")
            content, calls = content + rest, calls + more
        if not self.tools.parallel:  # parallel_tool_calls false: a second call is dropped
            calls = [c for c in calls if c["index"] == 0]
        calls = merge_call_deltas(calls)
        if self.tools.legacy_functions:  # one call, as delta.function_call pieces
            pieces = [c["function"] for c in calls if c["index"] == 0]
            function_call = pc.FunctionCallDelta(name=next((p["name"] for p in pieces if "name" in p), None),
                                                 arguments="".join(p["arguments"] for p in pieces)) if pieces else None
            return pc.DeltaMessage(content=content or None, function_call=function_call,
                                   reasoning_content=thought, reasoning=thought)
        return pc.DeltaMessage(content=content or None, reasoning_content=thought, reasoning=thought,
                               tool_calls=[pc.ToolCallDelta.model_validate(c) for c in calls] or None)

    def _parsed_delta(self, index: int, text: str, finish_reason: str | None = None) -> pc.DeltaMessage:
        """A delta for the endpoints built on these chunks (/v1/responses, /v1/messages): parsed
        when there are tools or a reasoning parser, else the text as content."""
        if self.is_parsed:
            return self._delta(index, text, finish_reason)
        return pc.DeltaMessage(content=text or None)

    def _split(self, index: int, text: str, is_finished: bool = False) -> tuple[str, str]:
        """The choice's new text → (thinking, answer) pieces."""
        stream = self.reasoning_streams.get(index) or \
            self.reasoning_streams.setdefault(index, ReasoningStream(self.reasoning))
        num_tokens = self.num_tokens.get(index, 0)
        return stream.finish(num_tokens) if is_finished else stream.feed(text, num_tokens)

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

    def text_chunk(self, index: int, text: str, logprobs: list[TokenLogprob]) -> dict | str | None:
        if self.num_logprobs is None and self.tools is None:
            # the hot path: the JSON text of the chunk built below, written directly
            if self.reasoning is None:
                delta = f'"content": {json_string(text)}'
            else:  # DeltaMessage's fields in its order, the empty ones left out
                thought, text = self._split(index, text)
                if not (thought or text):
                    return None  # held back
                thought = json_string(thought) if thought else ""
                delta = ", ".join([*([f'"content": {json_string(text)}'] if text else []),
                                   *([f'"reasoning_content": {thought}, "reasoning": {thought}'] if thought else [])])
            return (f'{self.chunk_head("chat.completion.chunk")}{{"index": {index}, "delta": {{{delta}}}, '
                    f'"logprobs": null, "finish_reason": null}}]}}')
        piece = None
        if self.num_logprobs is not None:
            content = chat_logprobs(self.strings, logprobs, self.num_logprobs)
            self.logprobs.setdefault(index, []).extend(content)
            piece = pc.ChatLogprobs(content=content)
        delta = self._delta(index, text) if self.is_parsed else pc.DeltaMessage(content=text)
        return self._chunk([pc.ChatStreamChoice(index=index, delta=delta, logprobs=piece)])

    def finish_chunk(self, index: int, reason: str) -> dict:
        delta = self._delta(index, "", finish_reason=reason) if self.is_parsed else pc.DeltaMessage()
        stream = self.tool_streams.get(index)
        reason = self._finish_reason(index, reason, stream.num_calls if stream else 0)
        return self._chunk([pc.ChatStreamChoice(index=index, delta=delta, finish_reason=reason)])

    def message(self, index: int) -> tuple[pc.ResponseMessage, str | None]:
        """A finished choice's message, tool calls parsed out, and its finish_reason."""
        text, reason = self.texts[index], self.finish_reasons.get(index)
        thought = None
        if self.reasoning is not None:
            thought, text = split_reasoning(text, self.reasoning)
        if self.tools is None:
            content = text or None if thought is not None else text  # all thinking: no answer (null)
            return pc.ResponseMessage(content=content, reasoning_content=thought, reasoning=thought), reason
        content, calls = parse_calls(text, self.tools, reason == "length")
        content = content or None if thought is not None else content
        calls = calls if self.tools.parallel else calls[:1]
        reason = self._finish_reason(index, reason, len(calls))
        if self.tools.legacy_functions:
            function_call = pc.FunctionCall(name=calls[0]["name"], arguments=calls[0]["arguments"]) if calls else None
            return pc.ResponseMessage(content=content, function_call=function_call,
                                      reasoning_content=thought, reasoning=thought), reason
        tool_calls = [pc.ToolCall(id=c["id"], function={"name": c["name"], "arguments": c["arguments"]})
                      for c in calls]
        return pc.ResponseMessage(content=content, tool_calls=tool_calls or None,
                                  reasoning_content=thought, reasoning=thought), reason

    def usage(self) -> UsageInfo:
        usage = super().usage()
        if self.reasoning is not None:
            num = sum(s.num_reasoning_tokens for s in self.reasoning_streams.values())
            usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=num)
        return usage

    def usage_chunk(self) -> dict:
        return self._chunk([], self.usage())

    def full_response(self) -> dict:
        choices = [pc.ChatChoice(
            index=i, message=message, finish_reason=reason,
            logprobs=pc.ChatLogprobs(content=self.logprobs.get(i, [])) if self.num_logprobs is not None else None)
            for i in self.indices() for message, reason in [self.message(i)]]
        return pc.ChatCompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                         choices=choices, usage=self.usage()).model_dump()
