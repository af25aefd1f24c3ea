"""Dynamic micro-batching: concurrent requests share one forward pass.

Requests put their images on an asyncio queue; one worker takes what is waiting (up to
`max_batch_size`, waiting at most `max_wait_ms` for more) and runs the model in a single background
thread, so the event loop keeps accepting requests while the CPU computes. The number of images
admitted (queued or running) is bounded: beyond it `submit` raises `Overloaded` at once (-> 503)
instead of letting latency and memory grow without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

BatchFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class Overloaded(Exception):
    """The queue is full; the client should retry later."""


@dataclass
class _Item:
    image: np.ndarray  # CHW float32
    future: asyncio.Future


class MicroBatcher:
    """`await submit(images)` -> one (probabilities, embedding) pair per image, computed in batches."""

    def __init__(
        self,
        run_batch: BatchFn,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.run_batch, self.max_batch_size, self.max_wait = run_batch, max_batch_size, max_wait_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self.pending = 0  # images admitted and not yet answered
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dinotune-model")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(Overloaded("server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """All images of one request are admitted together or not at all."""
        if self.pending + len(images) > self.max_queue:
            raise Overloaded(f"{self.pending} images are waiting (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        items = [_Item(image, loop.create_future()) for image in images]
        self.pending += len(items)
        try:
            for item in items:
                self._queue.put_nowait(item)
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            self.pending -= len(items)

    async def _collect(self) -> list[_Item]:
        items = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch_size:
            try:
                items.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, 0.001))  # poll: cancelling a pending get() can lose an item
        return [item for item in items if not item.future.done()]  # a client gone away is skipped

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            groups: dict[tuple[int, ...], list[_Item]] = {}
            for item in items:  # resize="keep" gives images of different sizes
                groups.setdefault(item.image.shape, []).append(item)
            for group in groups.values():
                batch = np.stack([item.image for item in group])
                start = time.perf_counter()
                try:
                    probs, embeddings = await loop.run_in_executor(self._executor, self.run_batch, batch)
                except Exception as err:  # a failing batch must fail its requests, not the worker
                    for item in group:
                        if not item.future.done():
                            item.future.set_exception(err)
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(group), time.perf_counter() - start)
                for index, item in enumerate(group):
                    if not item.future.done():
                        item.future.set_result((probs[index], embeddings[index]))
