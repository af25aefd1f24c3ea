"""The HTTP API: FastAPI app factory and `serve()`.

Every request the client got wrong ends in a 4xx with a one-line `detail`, never a 500 and never a
dead server: bodies over the upload limit are cut off while streaming (413), pixel bombs are refused
from the image header (413), non-images are 415, corrupt images 400, and a full queue is 503 with
`Retry-After`. The model loads in the background so `/health` answers at once and `/ready` turns
200 when predictions can be served.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dinotune.config import StrictModel
from dinotune.data.transforms import FullSize
from dinotune.model.inference import index_png
from dinotune.serve.batching import MicroBatcher, Overloaded
from dinotune.serve.images import UploadError, decode_upload
from dinotune.serve.monitoring import Monitor
from dinotune.serve.runtime import Engine, load_engine
from dinotune.version import __version__

log = logging.getLogger("dinotune.serve")
ENDPOINTS = frozenset({"/predict", "/predict/batch", "/health", "/ready", "/info", "/metrics"})


class ServeConfig(StrictModel):
    """Server limits and monitoring thresholds (all have production-safe defaults)."""

    max_batch_size: int = Field(8, ge=1, description="Images per model call; 1 disables micro-batching.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long the first request of a batch waits for others.")
    max_queue: int = Field(64, ge=1, description="Images admitted (queued or running) before answering 503.")
    max_images_per_request: int = Field(32, ge=1, description="Images in one /predict/batch request.")
    max_upload_bytes: int = Field(20 * 2**20, ge=1, description="Request body limit (413 beyond it).")
    max_pixels: int = Field(4096 * 4096, ge=1, description="Pixels per image, checked from the header (413).")
    decode_concurrency: int = Field(2, ge=1, description="Images decoded at once (bounds decode memory).")
    request_timeout_s: float = Field(60.0, gt=0, description="Time a request may wait for the model (504).")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503.")
    top_k: int = Field(5, ge=1, description="Labels returned per image unless ?top_k= says otherwise.")
    threads: int | None = Field(None, ge=1, description="CPU threads for the model (None: runtime default).")
    confidence_window: int = Field(500, ge=1, description="Images in the rolling mean confidence.")
    low_confidence_threshold: float = Field(0.5, ge=0, le=1, description="Alert when the rolling mean is below.")
    drift_window: int = Field(500, ge=1, description="Images in the rolling drift statistic.")
    drift_threshold: float = Field(0.5, gt=0, description="Alert when the drift score is above.")
    alert_min_samples: int = Field(50, ge=1, description="Images seen before an alert may fire.")


class _BodyTooLarge(Exception):
    pass


class _Limits:
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
                raise _BodyTooLarge
            return message

        async def recording_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.max_bytes:
                await _too_large(self.max_bytes)(scope, receive, recording_send)
            else:
                await self.app(scope, limited_receive, recording_send)
        finally:
            self.monitor.observe_request(endpoint, status[0], time.perf_counter() - start)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"request body exceeds the server's limit of {limit} bytes"},
        status_code=413,
        headers={"Connection": "close"},
    )


def _error(status: int, detail: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class _Server:
    """The state behind one app: engine (maybe still loading), batcher, monitor, config."""

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
        self._transform: Any = None
        self._loader: asyncio.Task | None = None
        if self.engine is not None:
            self._ready(self.engine)

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.engine is not None
        return self.engine.run(images)

    def _ready(self, engine: Engine) -> None:
        prep = engine.card.preprocessing
        # a segmenter sees each image at its own size (sliding window), a classifier the card's input size
        self._transform = FullSize(prep.mean, prep.std) if engine.segments else prep.transform(engine.input_multiple)
        self.monitor.set_reference(engine.reference)
        self.engine = engine
        self.monitor.ready.set(1)
        log.info(
            "model %s ready (%s, %d classes, drift reference: %s)",
            engine.name,
            engine.runtime,
            len(engine.card.classes),
            "yes" if engine.reference is not None else "none",
        )

    async def start(self) -> None:
        self.decode_slots = asyncio.Semaphore(self.config.decode_concurrency)
        self.segment_slots = asyncio.Semaphore(1)  # whole images, one at a time: memory bound by the window
        self.batcher.start()
        if self.engine is None:
            self._loader = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        try:
            engine = await asyncio.to_thread(load_engine, self.model, self.config.threads)
            self._ready(engine)
        except Exception as err:  # the server stays up and /ready explains why it never became ready
            self.load_error = f"{type(err).__name__}: {err}"
            log.error("model %s failed to load: %s", self.model, self.load_error)

    async def stop(self) -> None:
        if self._loader is not None:
            self._loader.cancel()
        await self.batcher.stop()

    def prepare(self, data: bytes, name: str) -> np.ndarray:
        """Decode + preprocess one upload (runs in a worker thread)."""
        assert self.engine is not None
        prep = self.engine.card.preprocessing
        image = decode_upload(
            data, name, channels=prep.channels, scaling=prep.scaling_config(), max_pixels=self.config.max_pixels
        )
        return self._transform(image)["image"].numpy()


async def _read_uploads(request: Request, batch: bool, limit: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image: multipart file parts, or JSON {"image": b64} / {"images": [b64, ...]}."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=limit + 1, max_fields=limit + 8) as form:
            files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
            files.sort(key=lambda kv: kv[0] != "file" and kv[0] != "files")
            uploads = [(f.filename or key, await f.read()) for key, f in files]
    elif content_type == "application/json":
        try:
            payload = await request.json()
        except ValueError:
            raise UploadError(400, "body is not valid JSON") from None
        except RecursionError:  # a deeply nested body: refuse it, never a 500
            raise UploadError(400, "JSON body is nested too deeply") from None
        key = "images" if batch else "image"
        items = payload.get(key) if isinstance(payload, dict) else None
        items = [items] if isinstance(items, str) and not batch else items
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            shape = '["<base64>", ...]' if batch else '"<base64>"'
            raise UploadError(400, f'JSON body must be {{"{key}": {shape}}}')
        uploads = [(f"image {i}", _b64(item, i)) for i, item in enumerate(items)]
    else:
        raise UploadError(415, "send multipart/form-data with a file part, or application/json with base64 images")
    if not uploads:
        raise UploadError(400, "no image in the request (multipart file part 'file' or JSON 'image')")
    if not batch and len(uploads) > 1:
        raise UploadError(400, f"{len(uploads)} images sent to /predict; send several to /predict/batch")
    if len(uploads) > limit:
        raise UploadError(413, f"{len(uploads)} images in one request; the limit is {limit}")
    return uploads


def _b64(text: str, index: int) -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]  # data URL
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(400, f"image {index}: not valid base64") from None


def _segmentation_answer(probs: np.ndarray, card: Any) -> dict[str, Any]:
    """The mask as a base64 index PNG (palette = class colours) and each class's share of the pixels."""
    mask = probs.argmax(0)
    counts = np.bincount(mask.ravel(), minlength=len(card.classes))
    return {
        "mask_png": base64.b64encode(index_png(mask, card.colours)).decode("ascii"),
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "fractions": {c: round(float(n) / mask.size, 6) for c, n in zip(card.classes, counts, strict=True)},
    }


async def _segment(server: _Server, images: list[np.ndarray]) -> list[dict[str, Any]]:
    assert server.segment_slots is not None and server.engine is not None
    answers = []
    for image in images:
        async with server.segment_slots:
            probs = await run_in_threadpool(server.engine.segment, image)
        answers.append(_segmentation_answer(probs, server.engine.card))
    return answers


def _top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": classes[i], "index": int(i), "probability": round(float(probs[i]), 6)} for i in order]


def create_app(model: str | Path | Engine, config: ServeConfig | None = None) -> FastAPI:
    """An app serving `model`: a model/run folder, an export folder, an exported .onnx, or an Engine."""
    config = config or ServeConfig()
    server = _Server(model, config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await server.start()
        yield
        await server.stop()

    app = FastAPI(title="dinotune", version=__version__, lifespan=lifespan)
    app.state.server = server
    app.add_middleware(_Limits, monitor=server.monitor, max_bytes=config.max_upload_bytes)
    app.add_exception_handler(_BodyTooLarge, lambda request, exc: _too_large(config.max_upload_bytes))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if server.engine is not None:
            return JSONResponse({"ready": True, "model": server.engine.name})
        detail = f"model failed to load: {server.load_error}" if server.load_error else "model is loading"
        return JSONResponse({"ready": False, "detail": detail}, status_code=503)

    @app.get("/info")
    async def info() -> JSONResponse:
        engine = server.engine
        if engine is None:
            return _error(503, "model is loading", config.retry_after_s)
        card = engine.card
        return JSONResponse(
            {
                "model": engine.name,
                "runtime": engine.runtime,
                "task": card.task,
                "classes": card.classes,
                "multilabel": card.multilabel,
                "preprocessing": card.preprocessing.__dict__,
                "backbone": card.backbone,
                "license": card.license,
                "dinotune_version": __version__,
                "export": card.metrics.get("export"),
                "limits": config.model_dump(),
                "monitoring": server.monitor.snapshot(),
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        server.monitor.queue.set(server.batcher.pending)
        return Response(generate_latest(server.monitor.registry), media_type=CONTENT_TYPE_LATEST)

    async def predict(request: Request, batch: bool) -> JSONResponse:
        engine = server.engine
        if engine is None:
            return _error(503, "model is not ready", config.retry_after_s)
        if server.batcher.pending >= config.max_queue:  # shed load before reading the body
            return _error(503, "server is overloaded; retry later", config.retry_after_s)
        try:
            top_k = int(request.query_params.get("top_k", config.top_k))
        except ValueError:
            return _error(400, "top_k must be an integer")
        limit = config.max_images_per_request if batch else 1
        try:
            uploads = await _read_uploads(request, batch, limit)
            assert server.decode_slots is not None
            images = []
            for name, data in uploads:
                async with server.decode_slots:
                    images.append(await run_in_threadpool(server.prepare, data, name))
            del uploads
            if engine.segments:
                answers = await asyncio.wait_for(_segment(server, images), config.request_timeout_s)
                body = {"model": engine.name, "results": answers} if batch else {"model": engine.name, **answers[0]}
                return JSONResponse(body)
            results = await asyncio.wait_for(server.batcher.submit(images), config.request_timeout_s)
        except UploadError as err:
            return _error(err.status, err.message)
        except Overloaded as err:
            return _error(503, f"server is overloaded ({err}); retry later", config.retry_after_s)
        except TimeoutError:
            return _error(504, f"no result within {config.request_timeout_s} s")
        k = max(1, min(top_k, len(engine.card.classes)))
        answers = []
        for probs, embedding in results:
            server.monitor.observe(probs, embedding)
            answers.append({"predictions": _top_k(probs, engine.card.classes, k)})
        body = {"model": engine.name, "results": answers} if batch else {"model": engine.name, **answers[0]}
        return JSONResponse(body)

    @app.post("/predict")
    async def predict_one(request: Request) -> JSONResponse:
        """One image: multipart file part (any name, 'file' preferred) or JSON {"image": "<base64>"}."""
        return await predict(request, batch=False)

    @app.post("/predict/batch")
    async def predict_batch(request: Request) -> JSONResponse:
        """Several images: multipart file parts, or JSON {"images": ["<base64>", ...]}."""
        return await predict(request, batch=True)

    return app


def serve(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    log_level: str = "info",
) -> None:
    """Run the server until interrupted (one process; scale out with replicas, not workers)."""
    import uvicorn

    config = config or ServeConfig()
    app = create_app(model, config)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=5,
        limit_concurrency=max(64, 4 * config.max_queue),
    )
