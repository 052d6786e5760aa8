"""One HTTP request's engine requests, merged into one stream; aborted together on close()."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import anyio

from engine import RequestOutput, SamplingParams

logger = logging.getLogger("gptserve.server")


class Generation:
    """The engine requests of one HTTP request, merged into one stream of (prompt index, output).

    ``close()`` aborts every engine request that has not finished; callers run it in a
    ``finally`` so that a cancelled consumer (client gone) frees its KV blocks at once.
    """

    def __init__(self, engine, prompts: list[list[int]], params: SamplingParams, request_id: str):
        self.engine = engine
        self.request_ids = [f"{request_id}-{k}" for k in range(len(prompts))]
        self.unfinished = set(self.request_ids)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._pump(k, ids, params)) for k, ids in enumerate(prompts)]

    async def _pump(self, k: int, prompt_ids: list[int], params: SamplingParams) -> None:
        try:
            async for out in self.engine.generate(prompt_ids, params, self.request_ids[k]):
                self._queue.put_nowait((k, out, None))
            self._queue.put_nowait((k, None, None))
        except Exception as exc:  # handed to the consumer, which decides the HTTP outcome
            self._queue.put_nowait((k, None, exc))

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        num_running = len(self._tasks)
        while num_running:
            k, out, exc = await self._queue.get()
            if exc is not None:
                raise exc
            if out is None:
                num_running -= 1
                continue
            if out.is_finished:
                self.unfinished.discard(self.request_ids[k])
            yield k, out

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):  # runs even while the caller is being cancelled
            for task in self._tasks:
                task.cancel()
            for request_id in list(self.unfinished):
                try:
                    await self.engine.abort(request_id)
                except Exception:
                    logger.exception("abort of %s failed", request_id)
            self.unfinished.clear()
