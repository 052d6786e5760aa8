"""/tokenize and /detokenize (vLLM's shapes): what the server would feed the model, and back.

Behind the API key like every route not named public in server/auth.py, and under admission
(server/admission.py) like generation: a 4 MB text takes seconds to tokenize. The work runs on
worker threads, so the event loop keeps answering everyone else meanwhile.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from server.errors import bad_request
from server.protocol_tokens import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.routes import serving_for

router = APIRouter()


def _tokenize(serving, body: TokenizeRequest) -> list[int]:
    tokenizer = serving.tokenizer
    if body.prompt is not None:
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        return tokenizer.encode(body.prompt, add_special_tokens=add_special)
    try:
        chat = body.chat_request()
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        raise bad_request(f"Invalid value for '{param}': {error['msg']}.", param=param, code="invalid_value")
    # tools included, special tokens' text in messages as plain text: exactly as the chat endpoint
    return serving.chat.prompt(chat, add_special_tokens=bool(body.add_special_tokens))[1]


@router.post("/tokenize", name="tokenize")
async def tokenize(body: TokenizeRequest, raw_request: Request) -> JSONResponse:
    serving = serving_for(raw_request, body.model)  # the model the body names (several may be served)

    def respond() -> JSONResponse:  # a long text's hundreds of thousands of ids: built and rendered here too
        tokens = _tokenize(serving, body)
        strs = [serving.completion.strings(t)[0] for t in tokens] if body.return_token_strs else None
        return JSONResponse(TokenizeResponse(count=len(tokens), max_model_len=serving.max_model_len, tokens=tokens,
                                             token_strs=strs).model_dump())

    return await asyncio.to_thread(respond)


@router.post("/detokenize", name="detokenize")
async def detokenize(body: DetokenizeRequest, raw_request: Request) -> JSONResponse:
    serving = serving_for(raw_request, body.model)
    vocab_size = serving.tokenizer.vocab_size
    bad = next((t for t in body.tokens if t >= vocab_size), None)
    if bad is not None:
        raise bad_request(f"Token id {bad} is out of range (vocabulary size {vocab_size}).", param="tokens",
                          code="invalid_value")
    text = await asyncio.to_thread(serving.tokenizer.decode, body.tokens, skip_special_tokens=False)
    return JSONResponse(DetokenizeResponse(prompt=text).model_dump())
