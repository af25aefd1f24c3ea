"""`ServeConfig`: the server's limits, threads, workers and monitoring thresholds, with safe defaults."""

from __future__ import annotations

from pydantic import Field

from dinotune.config import StrictModel


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
    threads: int | None = Field(
        None, ge=1, description="Model CPU threads per worker (None: the cgroup CPU quota / workers)."
    )
    workers: int = Field(
        1, ge=1, description="Worker processes (`dinotune serve` starts them; under gunicorn, set it to -w)."
    )
    confidence_window: int = Field(500, ge=1, description="Images in the rolling mean confidence.")
    low_confidence_threshold: float = Field(0.5, ge=0, le=1, description="Alert when the rolling mean is below.")
    drift_window: int = Field(500, ge=1, description="Images in the rolling drift statistic.")
    drift_threshold: float = Field(0.5, gt=0, description="Alert when the drift score is above.")
    alert_min_samples: int = Field(50, ge=1, description="Images seen before an alert may fire.")
