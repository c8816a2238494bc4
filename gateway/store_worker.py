"""Runs the Store on one dedicated thread, so SQLite and fsync never block the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from .store import Store

P = ParamSpec("P")
R = TypeVar("R")


class StoreWorker:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def call(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run function(*args) on the store thread; calls run one at a time, in order."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    def close(self) -> None:
        self._executor.submit(self.store.close).result()
        self._executor.shutdown(wait=True)
