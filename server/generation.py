"""One HTTP request's engine requests, merged into one stream; aborted together on close()."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import anyio

from engine import RequestOutput, SamplingParams
from server.admission import current_ticket
from server.errors import APIError

logger = logging.getLogger("gptserve.server")


class Generation:
    """The engine requests of one HTTP request, merged into one stream of (prompt index, output).

    ``close()`` aborts every engine request that has not finished; callers run it in a
    ``finally`` so that a cancelled consumer (client gone) frees its KV blocks at once.

    Under admission (``current_ticket`` set), the prompts' exact token counts replace the
    admission's estimate in the queued-token count until each prompt's first output, and past
    the ticket's deadline (``--request-timeout``) iteration aborts every engine request and
    raises a 408 ``APIError`` of type "timeout".
    """

    def __init__(self, engine, prompts: list[list[int]], params: SamplingParams, request_id: str):
        self.engine = engine
        self.request_id = request_id
        self.request_ids = [f"{request_id}-{k}" for k in range(len(prompts))]
        self.unfinished = set(self.request_ids)
        self.ticket = current_ticket.get()
        self._num_queued_tokens = {k: len(ids) for k, ids in enumerate(prompts)}  # until the first output
        if self.ticket is not None:
            self.ticket.dequeue_tokens()  # the estimate made from the body size
            self.ticket.queue_tokens(sum(self._num_queued_tokens.values()))
        self._queue: asyncio.Queue = asyncio.Queue()
        if len(prompts) == 1:
            # one prompt (the usual case): its engine stream is iterated directly, no pump task
            # and no second queue, so each token wakes one task instead of two
            self._stream = engine.generate(prompts[0], params, self.request_ids[0])
            self._tasks = []
        else:
            self._stream = None
            self._tasks = [asyncio.create_task(self._pump(k, ids, params)) for k, ids in enumerate(prompts)]

    async def _pump(self, k: int, prompt_ids: list[int], params: SamplingParams) -> None:
        try:
            async for out in self.engine.generate(prompt_ids, params, self.request_ids[k]):
                self._queue.put_nowait((k, out, None))
            self._queue.put_nowait((k, None, None))
        except Exception as exc:  # handed to the consumer, which decides the HTTP outcome
            self._queue.put_nowait((k, None, exc))

    async def _next(self) -> tuple[int, RequestOutput | None, Exception | None]:
        return await self._before_deadline(self._queue.get())

    async def _next_single(self) -> RequestOutput:
        """The single prompt's next output (StopAsyncIteration at its end), under the deadline."""
        return await self._before_deadline(self._stream.__anext__())

    async def _before_deadline(self, awaitable):
        """Await it, or past the request's deadline abort everything and raise the 408."""
        deadline = self.ticket.deadline if self.ticket is not None else None
        if deadline is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            await self._timed_out()

    async def _timed_out(self) -> None:
        """Past the deadline: abort everything, then raise the 408."""
        timeout = self.ticket.admission.request_timeout
        logger.warning("%s: past the request timeout (%g s); aborting it", self.request_id, timeout)
        await self.close()  # before the error reaches the client: the KV blocks are freed now
        raise APIError(408, f"The request did not finish within the server's request timeout of "
                            f"{timeout:g} s; its generation was stopped.", code="request_timeout") from None

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        if self._stream is not None:
            has_deadline = self.ticket is not None and self.ticket.deadline is not None  # fixed at admission
            next_output = self._next_single if has_deadline else self._stream.__anext__
            while True:
                try:
                    out = await next_output()
                except StopAsyncIteration:
                    return
                if self._num_queued_tokens:
                    self._dequeue(0)
                if out.is_finished:
                    self.unfinished.discard(self.request_ids[0])
                yield 0, out
        num_running = len(self._tasks)
        while num_running:
            k, out, exc = await self._next()
            if exc is not None:
                raise exc
            if out is None:
                num_running -= 1
                continue
            self._dequeue(k)
            if out.is_finished:
                self.unfinished.discard(self.request_ids[k])
            yield k, out

    def _dequeue(self, k: int) -> None:
        """Prompt ``k`` has been prefilled (its first output came): no longer queued."""
        num_tokens = self._num_queued_tokens.pop(k, 0)
        if num_tokens and self.ticket is not None:
            self.ticket.dequeue_tokens(num_tokens)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):  # runs even while the caller is being cancelled
            for task in self._tasks:
                task.cancel()
            if self._stream is not None:
                try:
                    await self._stream.aclose()  # its own finally drops the engine stream
                except RuntimeError:  # still running elsewhere: the abort below still frees it
                    pass
            for request_id in list(self.unfinished):
                try:
                    await self.engine.abort(request_id)
                except Exception:
                    logger.exception("abort of %s failed", request_id)
            self.unfinished.clear()
            for k in list(self._num_queued_tokens):
                self._dequeue(k)
