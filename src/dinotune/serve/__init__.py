"""Serving: `create_app(model, config)` builds the FastAPI app, `serve(model, host=, port=, config=)` runs it.

Importing this package needs the `[serve]` extra (fastapi, uvicorn, python-multipart, prometheus-client);
an ONNX export is served without torch (the `[serve-onnx]` set: see docs/serve.md).
"""

from __future__ import annotations

from dinotune.serve.app import create_app
from dinotune.serve.config import ServeConfig
from dinotune.serve.launch import serve
from dinotune.serve.runtime import Engine, load_engine

__all__ = ["Engine", "ServeConfig", "create_app", "load_engine", "serve"]
