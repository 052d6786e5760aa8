"""Graceful shutdown: SIGTERM drains the server before uvicorn stops it.

uvicorn alone would stop at once on SIGTERM, and sse-starlette (which patches uvicorn's
``handle_exit``) would end every open stream without its last chunks or ``[DONE]``. So the
signals are ours: the first SIGTERM or SIGINT marks the server draining (/ready and new
requests get 503), waits up to ``drain_timeout`` for the requests in flight, and only then
tells uvicorn (and, if some are still running, sse-starlette) to exit. A second signal exits
at once.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Generator
from contextlib import contextmanager

import uvicorn
from sse_starlette.sse import AppStatus

from server.admission import Admission

logger = logging.getLogger("gptserve.server")
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, admission: Admission, drain_timeout: float) -> None:
        super().__init__(config)
        self.admission = admission
        self.drain_timeout = drain_timeout
        self._drain_task: asyncio.Task | None = None

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()

        # a plain function, not a bound method: sse-starlette looks for a uvicorn Server behind
        # the SIGTERM handler and would end the streams as soon as it saw should_exit
        def on_signal(sig: int, frame) -> None:
            if self._drain_task is not None or self.should_exit:
                logger.warning("second %s: exiting without waiting", signal.Signals(sig).name)
                AppStatus.should_exit = True
                self.should_exit = self.force_exit = True
                return
            loop.call_soon_threadsafe(self._start_drain, sig)

        originals = {sig: signal.signal(sig, on_signal) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def _start_drain(self, sig: int) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        num_in_flight = self.admission.num_in_flight
        logger.info("%s: draining %d request(s) in flight (up to %.0f s), refusing new ones",
                    signal.Signals(sig).name, num_in_flight, self.drain_timeout)
        if not await self.admission.drain(self.drain_timeout):
            logger.warning("drain timeout: %d request(s) still in flight are cut off", self.admission.num_in_flight)
            AppStatus.should_exit = True  # sse-starlette ends the streams still open
        self.should_exit = True
