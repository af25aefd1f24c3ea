"""`serve()`: run the app with uvicorn, in one process or in several worker processes.

Workers are separate interpreters started by uvicorn from the app factory, so the model path and the
resolved config reach them through the environment (DINOTUNE_MODEL, DINOTUNE_CONFIG: a YAML written
to a private temporary folder), and their metrics through PROMETHEUS_MULTIPROC_DIR (a folder in the
same place unless the operator set one), so that `/metrics` counts every worker's requests.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from dinotune.serve.config import ServeConfig
from dinotune.serve.environment import CONFIG_ENV, MODEL_ENV, MULTIPROC_ENV, multiprocess_dir

FACTORY = "dinotune.serve.app:create_app"


def _uvicorn_options(config: ServeConfig, host: str, port: int, log_level: str) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "log_level": log_level,
        "timeout_keep_alive": 5,
        "limit_concurrency": max(64, 4 * config.max_queue),
    }


def serve(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    log_level: str = "info",
) -> None:
    """Run the server until interrupted: `config.workers` processes share the port and the metrics."""
    import uvicorn

    config = config or ServeConfig()
    options = _uvicorn_options(config, host, port, log_level)
    if config.workers == 1:
        from dinotune.serve.app import create_app

        uvicorn.run(create_app(model, config), **options)
        return
    import yaml

    with tempfile.TemporaryDirectory(prefix="dinotune-serve-") as tmp:
        config_file = Path(tmp) / "serve.yaml"
        config_file.write_text(yaml.safe_dump(config.model_dump()))
        shared = multiprocess_dir()
        if shared is None:
            shared = Path(tmp) / "metrics"
            shared.mkdir()
        saved = {name: os.environ.get(name) for name in (MODEL_ENV, CONFIG_ENV, MULTIPROC_ENV)}
        os.environ.update(
            {MODEL_ENV: str(Path(model).resolve()), CONFIG_ENV: str(config_file), MULTIPROC_ENV: str(shared)}
        )
        try:
            uvicorn.run(FACTORY, factory=True, workers=config.workers, **options)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
