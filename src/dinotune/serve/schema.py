"""What the API promises, as pydantic models and OpenAPI request bodies, so Swagger can upload a file
and clients can be generated from `/openapi.json`.

The handlers read the body themselves (streamed size limit, multipart or base64 JSON, one-line errors),
so the request bodies are declared here rather than inferred from parameters.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str = Field(description="Class name.")
    index: int = Field(description="Class index in the model card's `classes`.")
    probability: float = Field(description="Softmax probability (sigmoid for multilabel models).")


class Classification(BaseModel):
    predictions: list[Prediction] = Field(description="The top_k classes, most probable first.")


class Segmentation(BaseModel):
    mask_png: str = Field(description="Base64 8-bit palette PNG: pixel values are class indices.")
    height: int
    width: int
    fractions: dict[str, float] = Field(description="Share of the pixels given to each class.")


class DepthMap(BaseModel):
    """A depth model's answer: the map in metres, row-major, as base64 little-endian float16 (or float32)."""

    data: str = Field(description="Base64 of the H x W values, row-major, little-endian, `dtype` each.")
    dtype: str = Field(description="float16: about 3 significant digits (0.05% relative precision).")
    shape: list[int] = Field(description="[height, width] of the map: the uploaded image's size.")
    unit: str = Field("m", description="Depth unit: metres.")
    min: float = Field(description="Smallest depth in the map.")
    max: float = Field(description="Largest depth in the map.")
    mean: float = Field(description="Mean depth of the map.")


class Depth(BaseModel):
    depth: DepthMap


class Detection(BaseModel):
    label: str = Field(description="Class name.")
    index: int = Field(description="Class index in the model card's `classes`.")
    score: float = Field(description="sqrt(sigmoid(class) x sigmoid(centerness)), after class-aware NMS.")
    box: list[float] = Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in the image's own pixels.")


class Detections(BaseModel):
    detections: list[Detection] = Field(description="The boxes found, best first (at most the card's limit).")
    height: int
    width: int


class PredictResponse(BaseModel):
    """One image's answer: `predictions` for a classifier, the mask fields for a segmenter, `depth` for depth,
    `detections` (with height and width) for a detector."""

    model: str = Field(description="The served model's name (from its card).")
    predictions: list[Prediction] | None = None
    mask_png: str | None = None
    height: int | None = None
    width: int | None = None
    fractions: dict[str, float] | None = None
    depth: DepthMap | None = None
    detections: list[Detection] | None = None


class BatchResponse(BaseModel):
    model: str = Field(description="The served model's name (from its card).")
    results: list[Classification | Segmentation | Depth | Detections] = Field(
        description="One answer per image, in upload order."
    )


class ErrorResponse(BaseModel):
    detail: str = Field(description="One line: what was wrong and how to fix it.")


class ImageJson(BaseModel):
    image: str = Field(description="The image file, base64-encoded (a data: URL is accepted).")


class ImagesJson(BaseModel):
    images: list[str] = Field(description="Image files, base64-encoded.")


class Ready(BaseModel):
    ready: bool
    model: str | None = None
    detail: str | None = None


def _binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def request_body(batch: bool) -> dict[str, Any]:
    """`openapi_extra` of /predict (one file) or /predict/batch (several): multipart, or base64 JSON."""
    if batch:
        files = {"type": "array", "items": _binary("An image file"), "description": "Image files (any part name)."}
        form = {"type": "object", "properties": {"files": files}, "required": ["files"]}
        json_schema = ImagesJson.model_json_schema()
    else:
        form = {"type": "object", "properties": {"file": _binary("The image file")}, "required": ["file"]}
        json_schema = ImageJson.model_json_schema()
    content = {"multipart/form-data": {"schema": form}, "application/json": {"schema": json_schema}}
    return {"requestBody": {"required": True, "content": content}}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad request: corrupt image, bad JSON, bad top_k, no file."},
    413: {"model": ErrorResponse, "description": "Body, image or pixel count over the server's limits."},
    415: {"model": ErrorResponse, "description": "Not a supported image, or not multipart/JSON."},
    503: {"model": ErrorResponse, "description": "Model not ready yet, or queue full (see Retry-After)."},
    504: {"model": ErrorResponse, "description": "No result within request_timeout_s."},
}


def openapi_without_422(app: Any) -> Any:
    """`app.openapi` without FastAPI's automatic 422: a bad parameter is answered 400 like every bad request."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                spec.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    return openapi
