"""The one place the server reads its environment, for launchers that start it without arguments.

`uvicorn --factory dinotune.serve.app:create_app` and `gunicorn 'dinotune.serve.app:create_app()'` call
`create_app()` with no arguments; it then serves `DINOTUNE_MODEL` with the `ServeConfig` YAML named by
`DINOTUNE_CONFIG` (optional). `PROMETHEUS_MULTIPROC_DIR` (read by prometheus_client itself) turns on
multiprocess metrics, so that several workers' counters add up in `/metrics`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from dinotune.config import load_config
from dinotune.errors import ConfigError
from dinotune.serve.config import ServeConfig

MODEL_ENV = "DINOTUNE_MODEL"
CONFIG_ENV = "DINOTUNE_CONFIG"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def from_environment(environ: Mapping[str, str] | None = None) -> tuple[Path, ServeConfig]:
    """(model path, config) from DINOTUNE_MODEL and DINOTUNE_CONFIG; one-line errors when unusable."""
    environ = os.environ if environ is None else environ
    model = environ.get(MODEL_ENV, "").strip()
    if not model:
        raise ConfigError(
            f"{MODEL_ENV} is not set: set it to the model to serve (a run folder, an export folder or an "
            f".onnx file), e.g. {MODEL_ENV}=runs/cats/export"
        )
    config_path = environ.get(CONFIG_ENV, "").strip()
    return Path(model), load_config(ServeConfig, config_path or None)


def multiprocess_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The Prometheus multiprocess folder, when metrics are shared between worker processes."""
    environ = os.environ if environ is None else environ
    value = environ.get(MULTIPROC_ENV) or environ.get(MULTIPROC_ENV.lower())
    return Path(value) if value else None


def log_to_stderr() -> None:
    """Show the server's own lines (model ready, alerts) in a launcher's worker, where nothing set up
    logging: uvicorn and gunicorn configure only their own loggers."""
    logger = logging.getLogger("dinotune")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
