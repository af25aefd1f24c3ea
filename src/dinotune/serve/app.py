"""The HTTP API: `create_app`, the FastAPI app factory.

Every request the client got wrong ends in a 4xx with a one-line `detail`, never a 500 and never a
dead server: bodies over the upload limit are cut off while streaming (413), pixel bombs are refused
from the image header (413), non-images are 415, corrupt images 400, and a full queue is 503 with
`Retry-After`. `/openapi.json` describes every endpoint (multipart upload, `top_k`, answers, errors).

Called with no arguments, `create_app()` reads DINOTUNE_MODEL and DINOTUNE_CONFIG (see
`dinotune.serve.environment`), which is what `uvicorn --factory dinotune.serve.app:create_app` and
`gunicorn -k uvicorn.workers.UvicornWorker 'dinotune.serve.app:create_app()'` call.
"""

from __future__ import annotations

import asyncio
import base64
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from dinotune.model.masks import index_png
from dinotune.serve.batching import Overloaded
from dinotune.serve.config import ServeConfig
from dinotune.serve.environment import from_environment, log_to_stderr
from dinotune.serve.images import UploadError, read_uploads
from dinotune.serve.monitoring import MEDIA_TYPE
from dinotune.serve.runtime import Engine
from dinotune.serve.schema import (
    ERRORS,
    BatchResponse,
    ErrorResponse,
    PredictResponse,
    Ready,
    openapi_without_422,
    request_body,
)
from dinotune.serve.server import BodyTooLarge, Limits, ServerState, error, too_large
from dinotune.version import __version__

__all__ = ["ServeConfig", "create_app"]
TOP_K = Query(None, ge=1, description="Labels per image (default: the server's top_k; at most the class count).")


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


def _depth_answer(depth: np.ndarray, dtype: str = "float16") -> dict[str, Any]:
    """The depth map (metres) as base64 little-endian `dtype`, row-major, with its shape and range."""
    values = np.ascontiguousarray(depth, dtype=np.dtype(dtype).newbyteorder("<"))
    summary = {k: round(float(f(depth)), 6) for k, f in (("min", np.min), ("max", np.max), ("mean", np.mean))}
    data = base64.b64encode(values.tobytes()).decode("ascii")
    return {"depth": {"data": data, "dtype": dtype, "shape": list(depth.shape), "unit": "m", **summary}}


async def _segment(server: ServerState, images: list[np.ndarray]) -> list[dict[str, Any]]:
    """Whole images one at a time: class masks, or depth maps for a depth model."""
    assert server.segment_slots is not None and server.engine is not None
    answers = []
    depth = server.engine.card.task == "depth"
    for image in images:
        async with server.segment_slots:
            result = await run_in_threadpool(server.engine.depth_map if depth else server.engine.segment, image)
        answers.append(_depth_answer(result) if depth else _segmentation_answer(result, server.engine.card))
    return answers


def _detection_answer(found: dict[str, np.ndarray], image: np.ndarray, classes: list[str]) -> dict[str, Any]:
    boxes = [[round(float(v), 2) for v in box] for box in found["boxes"]]
    detections = [{"label": classes[int(c)], "index": int(c), "score": round(float(s), 6), "box": box}
                  for box, s, c in zip(boxes, found["scores"], found["labels"], strict=True)]  # fmt: skip
    return {"detections": detections, "height": int(image.shape[0]), "width": int(image.shape[1])}


async def _detect(server: ServerState, images: list[np.ndarray]) -> list[dict[str, Any]]:
    assert server.segment_slots is not None and server.engine is not None
    answers = []
    for image in images:
        async with server.segment_slots:  # one image at a time, as segmentation
            found = await run_in_threadpool(server.engine.detect, image)
        answers.append(_detection_answer(found, image, server.engine.card.classes))
    return answers


def _top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": classes[i], "index": int(i), "probability": round(float(probs[i]), 6)} for i in order]


async def _answers(server: ServerState, request: Request, batch: bool, top_k: int) -> list[dict[str, Any]]:
    """Read, decode, run: one answer per image (raises UploadError, Overloaded, TimeoutError)."""
    config, engine = server.config, server.engine
    assert engine is not None and server.decode_slots is not None
    uploads = await read_uploads(request, batch, config.max_images_per_request if batch else 1)
    images = []
    for name, data in uploads:
        async with server.decode_slots:
            images.append(await run_in_threadpool(server.prepare, data, name))
    del uploads
    if engine.segments:
        return await asyncio.wait_for(_segment(server, images), config.request_timeout_s)
    if getattr(engine, "detects", False):  # engines made before detection (tests wrap some) have no flag
        return await asyncio.wait_for(_detect(server, images), config.request_timeout_s)
    results = await asyncio.wait_for(server.batcher.submit(images), config.request_timeout_s)
    k = max(1, min(top_k, len(engine.card.classes)))
    answers = []
    for probs, embedding in results:
        server.monitor.observe(probs, embedding)
        answers.append({"predictions": _top_k(probs, engine.card.classes, k)})
    return answers


async def _predict(server: ServerState, request: Request, batch: bool, top_k: int | None) -> JSONResponse:
    config, engine = server.config, server.engine
    if engine is None:
        return error(503, "model is not ready", config.retry_after_s)
    if server.batcher.pending >= config.max_queue:  # shed load before reading the body
        return error(503, "server is overloaded; retry later", config.retry_after_s)
    try:
        answers = await _answers(server, request, batch, top_k or config.top_k)
    except UploadError as err:
        return error(err.status, err.message)
    except Overloaded as err:
        return error(503, f"server is overloaded ({err}); retry later", config.retry_after_s)
    except TimeoutError:
        return error(504, f"no result within {config.request_timeout_s} s")
    body = {"model": engine.name, "results": answers} if batch else {"model": engine.name, **answers[0]}
    return JSONResponse(body)


def _bad_parameter(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 list of errors -> the one-line 400 every other bad request gets."""
    first = exc.errors()[0] if isinstance(exc, RequestValidationError) and exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    return error(400, f"{where}: {first.get('msg', 'invalid value')}")


def create_app(model: str | Path | Engine | None = None, config: ServeConfig | None = None) -> FastAPI:
    """An app serving `model`: a model/run folder, an export folder, an exported .onnx, or an Engine.

    Without `model`, DINOTUNE_MODEL names it and DINOTUNE_CONFIG its config (a launcher's factory call).
    """
    if model is None:
        log_to_stderr()
        model, environment_config = from_environment()
        config = config or environment_config
    config = config or ServeConfig()
    server = ServerState(model, config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await server.start()
        yield
        await server.stop()

    app = FastAPI(title="dinotune", version=__version__, lifespan=lifespan)
    app.state.server = server
    app.add_middleware(Limits, monitor=server.monitor, max_bytes=config.max_upload_bytes)
    app.add_exception_handler(BodyTooLarge, lambda request, exc: too_large(config.max_upload_bytes))
    app.add_exception_handler(RequestValidationError, _bad_parameter)
    _routes(app, server)
    app.openapi = openapi_without_422(app)  # type: ignore[method-assign]
    return app


def _routes(app: FastAPI, server: ServerState) -> None:
    config = server.config

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/ready", response_model=Ready, responses={503: {"model": Ready, "description": "Not ready (yet)."}})
    async def ready() -> JSONResponse:
        """200 once predictions can be served (readiness); 503 while loading or when loading failed."""
        if server.engine is not None:
            return JSONResponse({"ready": True, "model": server.engine.name})
        detail = f"model failed to load: {server.load_error}" if server.load_error else "model is loading"
        return JSONResponse({"ready": False, "detail": detail}, status_code=503)

    @app.get("/info", responses={503: {"model": ErrorResponse}})
    async def info() -> JSONResponse:
        """The model card's essentials, the server's limits and the monitoring figures."""
        engine = server.engine
        if engine is None:
            return error(503, "model is loading", config.retry_after_s)
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
                "checksum": getattr(engine, "checksum", ""),
                "export": card.metrics.get("export"),
                "limits": config.model_dump(),
                "monitoring": server.monitor.snapshot(),
            }
        )

    @app.get("/metrics", response_class=Response, responses={200: {"content": {MEDIA_TYPE: {}}}})
    async def metrics() -> Response:
        """Prometheus text format (every worker's values in multiprocess mode)."""
        server.monitor.queue.set(server.batcher.pending)
        return Response(server.monitor.exposition(), media_type=MEDIA_TYPE)

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=request_body(False))
    async def predict(request: Request, top_k: int | None = TOP_K) -> JSONResponse:
        """One image: a multipart file part (any name, 'file' preferred) or JSON {"image": "<base64>"}."""
        return await _predict(server, request, False, top_k)

    @app.post("/predict/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=request_body(True))
    async def predict_batch(request: Request, top_k: int | None = TOP_K) -> JSONResponse:
        """Several images: multipart file parts, or JSON {"images": ["<base64>", ...]}."""
        return await _predict(server, request, True, top_k)
