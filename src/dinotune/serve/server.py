"""The state behind one app (engine, batcher, monitor) and the ASGI middleware that meters and limits it.

The model loads in a background thread with its threads sized to the CPU quota, so `/health` answers
at once and `/ready` turns 200 when predictions can be served; a model that cannot load keeps the
server up and `/ready` says why. With several workers sharing one socket each worker loads its model
before it accepts connections, so no request reaches a worker that would answer "not ready".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import numpy as np
from fastapi.responses import JSONResponse

from dinotune.serve.batching import MicroBatcher
from dinotune.serve.config import ServeConfig
from dinotune.serve.images import decode_upload
from dinotune.serve.monitoring import Monitor
from dinotune.serve.runtime import Engine, load_engine
from dinotune.serve.threads import cpu_threads
from dinotune.version import __version__

log = logging.getLogger("dinotune.serve")
ENDPOINTS = frozenset({"/predict", "/predict/batch", "/health", "/ready", "/info", "/metrics"})
PROCESS_REFRESH_S = 5.0


class BodyTooLarge(Exception):
    pass


def too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"request body exceeds the server's limit of {limit} bytes"},
        status_code=413,
        headers={"Connection": "close"},
    )


def error(status: int, detail: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class Limits:
    """Pure ASGI middleware: records every response in the metrics and cuts off oversized bodies."""

    def __init__(self, app, monitor: Monitor, max_bytes: int) -> None:
        self.app, self.monitor, self.max_bytes = app, monitor, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        async def recording_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.max_bytes:
                await too_large(self.max_bytes)(scope, receive, recording_send)
            else:
                await self.app(scope, limited_receive, recording_send)
        finally:
            self.monitor.observe_request(endpoint, status[0], time.perf_counter() - start)


class ServerState:
    """The engine (maybe still loading), batcher, monitor and config of one app."""

    def __init__(self, model: str | Path | Engine, config: ServeConfig) -> None:
        self.config, self.model = config, model
        self.engine: Engine | None = None if isinstance(model, (str, Path)) else model
        self.load_error: str | None = None
        self.monitor = Monitor(
            confidence_window=config.confidence_window,
            low_confidence=config.low_confidence_threshold,
            min_samples=config.alert_min_samples,
            drift_window=config.drift_window,
            drift_threshold=config.drift_threshold,
        )
        self.batcher = MicroBatcher(
            self._run,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            on_batch=self.monitor.observe_batch,
        )
        self.decode_slots: asyncio.Semaphore | None = None
        self.segment_slots: asyncio.Semaphore | None = None
        self._tasks: list[asyncio.Task] = []
        self.threads: int | None = None  # chosen when the server loads the model itself
        if self.engine is not None:
            self._ready(self.engine)

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.engine is not None
        return self.engine.run(images)

    def _ready(self, engine: Engine) -> None:
        self.monitor.set_reference(engine.reference)
        self.engine = engine
        checksum = getattr(engine, "checksum", "")
        self.monitor.set_model(engine.name, __version__, engine.card.task, engine.runtime, checksum)
        classes = len(engine.card.classes)
        what = "depth in metres" if engine.card.task == "depth" else f"{classes} class{'es' if classes != 1 else ''}"
        log.info(
            "model %s ready (%s, %s, %s, drift reference: %s)",
            engine.name,
            engine.runtime,
            what,
            f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "threads: the caller's",
            "yes" if engine.reference is not None else "none",
        )

    async def start(self) -> None:
        self.decode_slots = asyncio.Semaphore(self.config.decode_concurrency)
        self.segment_slots = asyncio.Semaphore(1)  # whole images, one at a time: memory bound by the window
        self.batcher.start()
        loop = asyncio.get_running_loop()
        if self.config.workers > 1 and self.monitor.shared_dir is None:
            log.warning(
                "workers=%d but PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows only the answering worker's "
                "figures; set it to an empty folder shared by the workers (docs/serve.md)",
                self.config.workers,
            )
        if self.engine is None and self.config.workers > 1:
            await self._load()  # a worker takes connections only once it can answer them (no 503 from it)
        elif self.engine is None:
            self._tasks.append(loop.create_task(self._load()))
        if self.monitor.shared_dir is not None:
            self._tasks.append(loop.create_task(self._refresh_process()))

    async def _load(self) -> None:
        self.threads = cpu_threads(self.config.threads, self.config.workers)
        try:
            engine = await asyncio.to_thread(load_engine, self.model, self.threads)
            self._ready(engine)
        except Exception as err:  # the server stays up and /ready explains why it never became ready
            self.load_error = f"{type(err).__name__}: {err}"
            log.error("model %s failed to load: %s", self.model, self.load_error)

    async def _refresh_process(self) -> None:
        while True:  # every worker's process gauges, not only the one answering /metrics
            self.monitor.refresh_process()
            await asyncio.sleep(PROCESS_REFRESH_S)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.batcher.stop()
        self.monitor.close()

    def prepare(self, data: bytes, name: str) -> np.ndarray:
        """Decode + preprocess one upload (runs in a worker thread)."""
        assert self.engine is not None
        prep = self.engine.card.preprocessing
        image = decode_upload(
            data, name, channels=prep.channels, scaling=prep.scaling_config(), max_pixels=self.config.max_pixels
        )
        return self.engine.preprocess(image)
