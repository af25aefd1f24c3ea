"""/openapi.json describes the endpoints well enough to build a request from it alone: a multipart body
with a binary file field, the top_k query parameter, the answer's and the errors' schemas."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from dinotune.serve import create_app
from tests.serve.helpers import CLASSES, png_bytes


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _request_from_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    """httpx keyword arguments for `path`, built only from what the schema says."""
    operation = spec["paths"][path]["post"]
    form = _resolve(operation["requestBody"]["content"]["multipart/form-data"]["schema"], spec)
    files = []
    for field in form["required"]:
        prop = _resolve(form["properties"][field], spec)
        if prop.get("type") == "array":
            assert prop["items"]["format"] == "binary"
            files += [(field, (f"{i}.png", png_bytes(i), "image/png")) for i in range(2)]
        else:
            assert prop["format"] == "binary"
            files.append((field, ("x.png", png_bytes(0), "image/png")))
    query = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert _resolve(query["top_k"]["schema"], spec)["anyOf"][0] == {"type": "integer", "minimum": 1}
    return {"files": files, "params": {"top_k": 2}}


def _check_against(body: dict[str, Any], schema: dict[str, Any], spec: dict[str, Any]) -> None:
    schema = _resolve(schema, spec)
    assert set(schema.get("required", [])) <= set(body), (schema.get("required"), body)
    assert set(body) <= set(schema["properties"]), body


def test_a_request_built_from_the_schema_is_answered_as_the_schema_says(onnx_export: Path) -> None:
    with TestClient(create_app(onnx_export)) as client:
        for _ in range(200):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        spec = client.get("/openapi.json").json()
        for path in ("/predict", "/predict/batch"):
            operation = spec["paths"][path]["post"]
            assert operation["requestBody"]["required"] is True
            assert "application/json" in operation["requestBody"]["content"]  # the base64 alternative
            assert {"400", "413", "415", "503", "504"} <= set(operation["responses"])
            assert "422" not in operation["responses"]  # bad parameters are 400s, as documented
            error_schema = _resolve(operation["responses"]["415"]["content"]["application/json"]["schema"], spec)
            assert error_schema["required"] == ["detail"]
            answer = client.post(path, **_request_from_schema(spec, path))
            assert answer.status_code == 200, answer.text
            body = answer.json()
            ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
            _check_against(body, ok, spec)
            results = body["results"] if path.endswith("batch") else [body]
            assert all(len(r["predictions"]) == 2 and r["predictions"][0]["label"] in CLASSES for r in results)
            for prediction in results[0]["predictions"]:
                _check_against(prediction, spec["components"]["schemas"]["Prediction"], spec)
        bad = client.post("/predict", params={"top_k": "many"}, files={"file": ("x.png", png_bytes(0))})
        assert bad.status_code == 400 and bad.json() == {
            "detail": "top_k: Input should be a valid integer, unable to parse string as an integer"
        }
        _check_against(bad.json(), spec["components"]["schemas"]["ErrorResponse"], spec)
