"""Run a server on a background event-loop thread: for tests, benchmarks and embedding the
service in a program that is not itself asyncio."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from vidtag.server.app import VidtagServer
from vidtag.server.config import ServeConfig

T = TypeVar("T")


class LoopThread:
    """An asyncio loop on a daemon thread; `run` blocks the caller until a coroutine is done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextmanager
def running_server(
    config: ServeConfig, *, load: bool = True
) -> Iterator[tuple[VidtagServer, LoopThread]]:
    """A started server (SERVING once `load` has loaded and warmed its model), stopped on exit."""
    lt = LoopThread()
    server = VidtagServer(config)
    try:
        lt.run(server.start())
        if load:
            lt.run(server.load_models())
        yield server, lt
    finally:
        lt.run(server.stop(0))
        lt.close()
