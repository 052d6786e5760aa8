"""The asyncio bridge: the step loop runs on its own thread, off the event loop.

Requests and aborts reach the loop through a thread-safe queue; each step's outputs come back
to the event loop in one call_soon_threadsafe, fanned out to per-request asyncio queues.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import asdict

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

logger = logging.getLogger("gptserve.engine")


class EngineDeadError(RuntimeError):
    """The engine loop has died; no request can be served until the process restarts."""


class _Stream:
    """One request's outputs on the event loop: a deque and its one consumer's waiter (what an
    asyncio.Queue does for a single consumer, with less work per item)."""

    __slots__ = ("items", "waiter", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: collections.deque = collections.deque()
        self.waiter: asyncio.Future | None = None
        self.loop = loop

    def put_nowait(self, item) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self):
        while not self.items:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._intake: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.dead_error: BaseException | None = None
        self.last_heartbeat = 0.0

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncEngine:
        """Load the model and tokenizer (blocking: seconds to minutes)."""
        return cls(LLMEngine(config))

    # -- what the server reads ------------------------------------------------------------

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_config(self):
        return self.engine.model_config

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def quantization(self) -> str:
        """The weights' format as served: "int8", or the file's ("Q4_1", "BF16", "F32" …)."""
        return self.engine.quantization

    @property
    def device(self) -> str:
        return str(self.engine.device)

    @property
    def dtype(self) -> str:
        return str(self.engine.dtype).removeprefix("torch.")

    @property
    def num_kv_tokens(self) -> int:
        """KV cache capacity in tokens."""
        return self.engine.num_kv_tokens

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead_error is None

    def stats(self) -> dict:
        return asdict(self.engine.stats())

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="gptserve-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        self._stopping.set()
        self._intake.put(("wake", None, None, None))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)

    async def ping(self, timeout: float = 1.0) -> bool:
        """True when the loop answers within ``timeout`` seconds (a hung loop does not)."""
        if not self.is_running:
            return False
        fut = self._loop.create_future()
        self._intake.put(("ping", fut, None, None))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- requests -----------------------------------------------------------------------------

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; closing the iterator early aborts the request."""
        if self.dead_error is not None:
            raise EngineDeadError("the engine has stopped") from self.dead_error
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already running")
        self.engine.check_request(prompt_ids, params)  # raises ValueError before anything is queued
        stream = _Stream(asyncio.get_running_loop())
        self._streams[request_id] = stream
        self._intake.put(("add", request_id, prompt_ids, params))
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.is_finished
                yield item
                if finished:
                    break
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._intake.put(("abort", request_id, None, None))

    async def abort(self, request_id: str) -> None:
        self._intake.put(("abort", request_id, None, None))

    # -- the loop (engine thread) ----------------------------------------------------------

    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stopping.is_set():
                block = not engine.has_unfinished_requests()
                self._drain_intake(block)
                if engine.has_unfinished_requests():
                    outputs = engine.step()
                    if outputs:
                        self._loop.call_soon_threadsafe(self._deliver, outputs)
        except BaseException as exc:  # noqa: BLE001 - everything in flight must hear of it
            logger.exception("engine loop died")
            self.dead_error = exc
            self._loop.call_soon_threadsafe(self._fail_all, exc)

    def _drain_intake(self, block: bool) -> None:
        while True:
            try:
                kind, a, b, c = self._intake.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            block = False
            if kind == "add":
                try:
                    self.engine.add_request(a, b, c)
                except ValueError as exc:
                    self._loop.call_soon_threadsafe(self._deliver_error, a, exc)
            elif kind == "abort":
                out = self.engine.abort_request(a)
                if out is not None:
                    self._loop.call_soon_threadsafe(self._deliver, [out])
            elif kind == "ping":
                self._loop.call_soon_threadsafe(_resolve, a)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        streams = self._streams
        for out in outputs:
            stream = streams.get(out.request_id)
            if stream is not None:
                stream.put_nowait(out)

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put_nowait(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for stream in self._streams.values():
            err = EngineDeadError(f"the engine failed: {exc!r}")
            err.__cause__ = exc
            stream.put_nowait(err)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(True)
