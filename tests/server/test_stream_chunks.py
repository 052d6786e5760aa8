"""The per-token stream chunks written as JSON text (the hot path, no pydantic) are byte for byte
what the pydantic models dump to, and the SSE bytes are what sse-starlette would encode."""
from __future__ import annotations

import json

import pytest
from sse_starlette.event import ServerSentEvent

from server import protocol_chat as pchat
from server import protocol_completions as pcomp
from server.serving import sse_event
from server.serving_chat import ChatChunks
from server.serving_completions import CompletionChunks

TEXTS = ["Hello", " world", "", "quote \" backslash \\ slash /", "line\nbreak\r\ttab", "\x00\x1f\x7f",
         "Café naïve — “curly” 日本語 😀", "\u2028\u2029", "</script>", "{\"json\": [1, 2]}"]
IDS = ["cmpl-0123abc", "chatcmpl-\"odd\"-id"]
MODELS = ["SmolLM2-135M-Instruct", "name with \"quotes\" and ünicode"]


@pytest.mark.parametrize("request_id", IDS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("index", [0, 3, 17])
def test_completion_text_chunk_matches_pydantic(request_id, model, index):
    chunks = CompletionChunks(request_id, model, 1, False, None, None, num_choices=1, prompts=[[1]],
                              echo_texts=None)
    for text in TEXTS:
        fast = chunks.text_chunk(index, text, [])
        assert isinstance(fast, str)
        slow = pcomp.CompletionResponse(id=request_id, created=chunks.created, model=model,
                                        choices=[pcomp.CompletionChoice(index=index, text=text)]).model_dump()
        assert fast == json.dumps(slow)
        assert json.loads(fast) == slow


@pytest.mark.parametrize("request_id", IDS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("index", [0, 5])
def test_chat_text_chunk_matches_pydantic(request_id, model, index):
    chunks = ChatChunks(request_id, model, 1, False, None, None)
    for text in TEXTS:
        fast = chunks.text_chunk(index, text, [])
        assert isinstance(fast, str)
        slow = pchat.ChatCompletionChunk(
            id=request_id, created=chunks.created, model=model,
            choices=[pchat.ChatStreamChoice(index=index, delta=pchat.DeltaMessage(content=text))]).model_dump()
        assert fast == json.dumps(slow)


def test_sse_event_bytes_match_sse_starlette():
    chunks = [{"a": "x\ny", "b": [1, None]}, '{"c": "\\u00e9"}', {"d": "日本"}]
    expected = b"".join(ServerSentEvent(c if isinstance(c, str) else json.dumps(c), sep="\n").encode()
                        for c in chunks)
    assert sse_event(chunks) == expected
    assert sse_event([]) == b""


@pytest.mark.parametrize("is_thinking", [False, True])
def test_chat_reasoning_text_chunk_matches_pydantic(is_thinking):
    """A reasoning model's per-token chunks (thinking, then answer) on the hot path."""
    from server.reasoning import ReasoningStream

    fast_chunks = ChatChunks("chatcmpl-1", "m", 1, False, None, None, reasoning=is_thinking)
    reference = ReasoningStream(is_thinking)
    script = ([] if is_thinking else ["<th", "ink>\n"]) + TEXTS + ["\n</", "think>", "\n\n"] + TEXTS
    for text in script:
        fast = fast_chunks.text_chunk(0, text, [])
        thought, content = reference.feed(text)
        if not (thought or content):
            assert fast is None
            continue
        delta = pchat.DeltaMessage(content=content or None, reasoning_content=thought or None,
                                   reasoning=thought or None)
        slow = pchat.ChatCompletionChunk(id="chatcmpl-1", created=fast_chunks.created, model="m",
                                         choices=[pchat.ChatStreamChoice(index=0, delta=delta)]).model_dump()
        assert isinstance(fast, str) and fast == json.dumps(slow)
