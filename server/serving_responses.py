"""/v1/responses: a Responses request → the chat path's prompt, sampling and guide → engine →
Response bodies or stream events (``responses_events.ResponseChunks``), stored when asked."""
from __future__ import annotations

from fastapi.responses import JSONResponse

from server.errors import APIError
from server.protocol_responses import ResponsesRequest, new_id
from server.response_store import ResponseStore
from server.responses_events import ResponseChunks
from server.responses_input import check_supported, normalize_items, rename_param, to_chat_request
from server.serving import OpenAIServing
from server.serving_events import named_event_stream

CONVERSATION_ITEM_TYPES = ("message", "function_call", "function_call_output")


def conversation(store: ResponseStore, namespace: str, request: ResponsesRequest) -> list[dict]:
    """The items this response answers: the previous response's conversation and output, if
    any, then this request's input."""
    history: list[dict] = []
    if request.previous_response_id is not None:
        previous = store.get(namespace, request.previous_response_id)
        if previous is None:
            raise APIError(404, f"Previous response with id '{request.previous_response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        history = previous.items + [i for i in previous.response["output"] if i["type"] in CONVERSATION_ITEM_TYPES]
    return history + normalize_items(request)


async def create_response(serving: OpenAIServing, store: ResponseStore, namespace: str,
                          request: ResponsesRequest, model: str | None = None):
    check_supported(request)
    model_name = serving.resolve_model(model or request.model)
    items = conversation(store, namespace, request)
    chat_request = to_chat_request(request, items)
    try:
        prompts, params, tools, reasoning = await serving.chat.prepare(chat_request, "input")
    except APIError as exc:  # the chat request's field names → this request's
        exc.param = rename_param(exc.param)
        raise
    chunks = ResponseChunks(new_id("resp"), model_name, serving.chat.strings, request,
                            tools=tools if tools.is_active else None, reasoning=reasoning)

    def on_done(response: dict) -> None:
        if request.store is not False:
            store.put(namespace, response, items)

    if request.stream:
        return named_event_stream(serving, prompts, params, chunks, on_done=lambda end: on_done(end[-1]["response"]))
    await serving.run(prompts, params, chunks)
    body = chunks.full_response()
    on_done(body)
    return JSONResponse(body)


def input_items(stored, limit: int, order: str, after: str | None) -> dict:
    items = stored.items if order == "asc" else stored.items[::-1]
    if after is not None:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise APIError(404, f"No input item with id '{after}' in this response.", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "has_more": len(items) > limit,
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}
