"""Thin HTTP handlers: parse, hand to serving, return JSON or a stream."""
from __future__ import annotations

import asyncio
import functools
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.errors import APIError
from server.protocol_chat import ChatCompletionRequest
from server.protocol_completions import CompletionRequest
from server.serving import OpenAIServing

router = APIRouter()


def get_serving(request: Request) -> OpenAIServing:
    serving = request.app.state.serving
    if serving is None:
        raise APIError(503, "The model is still loading; try again shortly.")
    return serving


Serving = Annotated[OpenAIServing, Depends(get_serving)]  # the default (first) model's


def serving_for(request: Request, model: str | None) -> OpenAIServing:
    """The serving of the model a request names (None: the default); 404 / 400 / 503 otherwise."""
    return request.app.state.models.generation_serving(model)


async def _wait_for_disconnect(request: Request) -> None:
    # the body has been read already, so the next message is the client going away
    while (await request.receive())["type"] != "http.disconnect":
        pass


def with_cancellation(handler):
    """Run the handler, and cancel it (which aborts its engine requests) if the client leaves
    first. Streams need no help: their response notices the disconnect and cancels itself."""

    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        handler_task = asyncio.create_task(handler(*args, **kwargs))
        disconnect_task = asyncio.create_task(_wait_for_disconnect(kwargs["raw_request"]))
        done, _ = await asyncio.wait([handler_task, disconnect_task], return_when=asyncio.FIRST_COMPLETED)
        disconnect_task.cancel()
        if handler_task not in done:  # the client left: nobody to answer
            handler_task.cancel()
            await asyncio.gather(handler_task, return_exceptions=True)  # its finally aborts the engine
            return None
        return handler_task.result()

    return wrapper


@router.get("/health", name="health")
async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers and the engine loop has not died."""
    models = request.app.state.models
    if not await models.is_healthy():
        return APIError(503, "The inference engine is not responding.").response()
    return JSONResponse({"status": "ok"})


@router.get("/ready", name="ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: the model is loaded and requests are being accepted (not draining)."""
    if request.app.state.admission.is_draining:
        return APIError(503, "The server is shutting down.", code="server_shutting_down").response()
    models = request.app.state.models
    if not models.is_loaded:
        raise APIError(503, "The model is still loading; try again shortly.")
    if not await models.is_healthy():
        return APIError(503, "The inference engine is not responding.").response()
    return JSONResponse({"status": "ok"})


@router.get("/metrics", name="metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format; needs the API key unless --metrics-public."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.models.list_models().model_dump())


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.models.model_card(model_id).model_dump())


@router.post("/v1/completions")
@with_cancellation
async def create_completion(body: CompletionRequest, raw_request: Request):
    return await serving_for(raw_request, body.model).create_completion(body)


@router.post("/v1/chat/completions")
@with_cancellation
async def create_chat_completion(body: ChatCompletionRequest, raw_request: Request):
    return await serving_for(raw_request, body.model).create_chat_completion(body)


# openai<1.0 (`openai.Completion.create(engine=...)`) puts the model name in the path
@router.post("/v1/engines/{engine_name}/completions")
@with_cancellation
async def create_engine_completion(engine_name: str, body: CompletionRequest, raw_request: Request):
    return await serving_for(raw_request, engine_name).create_completion(body, model=engine_name)


@router.post("/v1/engines/{engine_name}/chat/completions")
@with_cancellation
async def create_engine_chat_completion(engine_name: str, body: ChatCompletionRequest, raw_request: Request):
    return await serving_for(raw_request, engine_name).create_chat_completion(body, model=engine_name)
