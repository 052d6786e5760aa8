"""/tokenize and /detokenize request and response models, in vLLM's shapes (pydantic only)."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from server.protocol import RequestModel, ResponseModel
from server.protocol_chat import ChatCompletionRequest, ChatMessage

MAX_DETOKENIZE_TOKENS = 1 << 20


class TokenizeRequest(RequestModel):
    """Either ``prompt`` (plain text) or ``messages`` (rendered through the chat template)."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    # None: True for a prompt (as /v1/completions encodes it), False for messages (the template
    # writes the special tokens itself), as vLLM does
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None  # checked as the chat endpoint checks it
    tools: list[dict[str, Any]] | None = None  # rendered as the chat endpoint renders them
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _prompt_or_messages(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        return self

    def chat_request(self) -> ChatCompletionRequest:
        """The chat fields, validated by the chat endpoint's own rules (whitelist, roles …)."""
        fields = {"messages": self.messages, "continue_final_message": self.continue_final_message,
                  "chat_template_kwargs": self.chat_template_kwargs}
        if self.add_generation_prompt is not None:
            fields["add_generation_prompt"] = self.add_generation_prompt
        if self.tools is not None:
            fields["tools"] = self.tools
        return ChatCompletionRequest.model_validate(fields, strict=False)


class TokenizeResponse(ResponseModel):
    omit_if_none = frozenset({"token_strs"})
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_DETOKENIZE_TOKENS)]


class DetokenizeResponse(ResponseModel):
    prompt: str
