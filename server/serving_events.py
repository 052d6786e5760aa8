"""Shared by /v1/responses and /v1/messages: the SSE stream of named events (``event: <type>``)
both APIs send. (The chat path up to the engine is ``ChatServing.prepare``.)"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from engine import SamplingParams
from server.generation import Generation
from server.serving import SSE_PING_SECONDS, OpenAIServing, SSEResponse


def sse_events(events: list[dict]) -> bytes:
    """Events as SSE, each named by its type, as OpenAI's Responses and Anthropic's Messages send them."""
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def named_event_stream(serving: OpenAIServing, prompts: list[list[int]], params: SamplingParams, chunks,
                       on_done: Callable[[list[dict]], None] | None = None) -> SSEResponse:
    """``chunks``: ``start()``, ``update(k, out)``, ``end()`` and ``failed(error)`` give the events;
    ``on_done(end events)`` runs once the generation has finished, before they are sent."""

    async def events() -> AsyncIterator[bytes]:
        timer = serving.metrics.timer()
        # started here, not before: a stream that never starts must leave nothing running
        generation = Generation(serving.engine, prompts, params, chunks.request_id)
        try:
            yield sse_events(chunks.start())
            async for k, out in generation:
                timer.output(k)
                made = chunks.update(k, out)
                if made:
                    yield sse_events(made)
            timer.finished(chunks.finish_reasons)
            end = chunks.end()
            if on_done is not None:
                on_done(end)
            yield sse_events(end)
        except Exception as exc:  # the 200 is sent already: the failure goes in-band
            error = serving._engine_error(exc)
            serving.metrics.error(error.status_code, error.type)
            yield sse_events(chunks.failed(error))
        finally:
            await generation.close()

    return SSEResponse(events(), ping=SSE_PING_SECONDS, sep="\n",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
