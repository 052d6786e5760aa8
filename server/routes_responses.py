"""Thin handlers for OpenAI's Responses API: create, retrieve, delete, input items."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from server.errors import APIError
from server.protocol_responses import ResponsesRequest
from server.response_store import ResponseStore, namespace_of
from server.routes import serving_for, with_cancellation
from server.serving_responses import create_response as serve_response
from server.serving_responses import input_items

router = APIRouter()


def store_and_namespace(request: Request) -> tuple[ResponseStore, str]:
    store: ResponseStore = request.app.state.response_store
    headers = request.headers
    return store, namespace_of(headers.get("authorization"), headers.get("x-api-key"), store.is_keyed)


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param="response_id",
                    code="response_not_found")


@router.post("/v1/responses", name="create_response")
@with_cancellation
async def create_response(body: ResponsesRequest, raw_request: Request):
    store, namespace = store_and_namespace(raw_request)
    return await serve_response(serving_for(raw_request, body.model), store, namespace, body)


@router.get("/v1/responses/{response_id}", name="retrieve_response")
async def retrieve_response(response_id: str, request: Request) -> JSONResponse:
    store, namespace = store_and_namespace(request)
    stored = store.get(namespace, response_id)
    if stored is None:
        raise _not_found(response_id)
    return JSONResponse(stored.response)


@router.delete("/v1/responses/{response_id}", name="delete_response")
async def delete_response(response_id: str, request: Request) -> JSONResponse:
    store, namespace = store_and_namespace(request)
    if not store.delete(namespace, response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items", name="list_response_input_items")
async def list_input_items(response_id: str, request: Request,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20,
                           order: Literal["asc", "desc"] = "desc", after: str | None = None) -> JSONResponse:
    store, namespace = store_and_namespace(request)
    stored = store.get(namespace, response_id)
    if stored is None:
        raise _not_found(response_id)
    return JSONResponse(input_items(stored, limit, order, after))
