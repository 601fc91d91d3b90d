"""Dynamic batching across concurrent requests, in plain asyncio (no model needed to test it).

Each request ``submit``s its items and awaits their results. One worker takes the first waiting
request, keeps gathering the requests that arrive until it holds ``max_batch`` items or
``max_wait_ms`` has passed since it took the first, runs ``fn`` once on all of them in a worker
thread (the event loop stays free to accept requests), and hands every request its own slice, in
its own order. A request with more than ``max_batch`` items is cut into pieces that never exceed
it. When ``fn`` raises, only the requests in that batch fail (with that exception).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """``submit`` after ``close``: the server is shutting down."""


@dataclass
class _Job:
    items: list[Any]
    future: asyncio.Future = field(repr=False)


_STOP = object()


class Batcher:
    """Batches ``submit`` calls into calls of ``fn(items) -> results`` (same length, same order).

    ``on_batch(n)`` is called with the size of every batch run (metrics)."""

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000
        self.on_batch = on_batch
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._own_executor = executor is None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """The results for ``items``, in order, once the batches holding them have run."""
        if self._closed or self._queue is None:
            raise BatcherClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        jobs = []
        for start in range(0, len(items), self.max_batch):
            job = _Job(list(items[start : start + self.max_batch]), loop.create_future())
            jobs.append(job)
            self._queue.put_nowait(job)
        parts = await asyncio.gather(*(job.future for job in jobs))
        return [result for part in parts for result in part]

    async def close(self) -> None:
        """Refuse new work, finish every waiting request, stop the worker."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None and self._worker is not None:
            self._queue.put_nowait(_STOP)
            await self._worker
        if self._own_executor:
            self.executor.shutdown(wait=True)

    async def _run(self) -> None:
        assert self._queue is not None
        carry: _Job | None = None
        stopping = False
        while not stopping:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            if first is _STOP:
                return
            batch, size = [first], len(first.items)
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                if job is _STOP:
                    stopping = True
                    break
                if size + len(job.items) > self.max_batch:
                    carry = job  # starts the next batch
                    break
                batch.append(job)
                size += len(job.items)
            await self._run_batch(batch, size)

    async def _run_batch(self, batch: list[_Job], size: int) -> None:
        items = [item for job in batch for item in job.items]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self.fn, items)
            if len(results) != len(items):
                raise RuntimeError(f"the model answered {len(results)} of {len(items)} items")
        except Exception as err:  # noqa: BLE001 - handed to the requests of this batch only
            log.debug("a batch of %d failed: %s", size, err)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(size)
        start = 0
        for job in batch:
            end = start + len(job.items)
            if not job.future.done():  # a cancelled request (client gone) is skipped
                job.future.set_result(list(results[start:end]))
            start = end
