"""Micro-batching, monitoring and upload decoding on their own (no HTTP)."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from dinotune.serve.batching import MicroBatcher, Overloaded
from dinotune.serve.images import UploadError, decode_upload
from dinotune.serve.monitoring import Monitor
from dinotune.serve.runtime import Reference
from tests.serve.helpers import bomb_png, png_bytes


def _echo_batches(sizes: list[int], delay: float = 0.0):
    """A fake model: probability row = the image's first pixel, so answers can be matched to inputs."""

    def run(batch: np.ndarray):
        sizes.append(len(batch))
        time.sleep(delay)
        values = batch[:, 0, 0, 0]
        return np.stack([values, -values], 1), batch[:, 0, 0, :]

    return run


async def _submit_many(batcher: MicroBatcher, n: int) -> list:
    batcher.start()
    try:
        images = [np.full((1, 2, 2), i, np.float32) for i in range(n)]
        return await asyncio.gather(*(batcher.submit([image]) for image in images))
    finally:
        await batcher.stop()


@pytest.mark.parametrize("max_batch", [1, 4])
def test_micro_batching_groups_concurrent_requests_and_keeps_answers_in_order(max_batch: int) -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(_echo_batches(sizes, 0.02), max_batch_size=max_batch, max_wait_ms=20, max_queue=64)
    results = asyncio.run(_submit_many(batcher, 10))
    assert [float(r[0][0][0]) for r in results] == list(range(10))
    assert sum(sizes) == 10 and max(sizes) <= max_batch
    if max_batch > 1:
        assert max(sizes) > 1


def test_batcher_refuses_beyond_its_queue() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(_echo_batches([], 0.2), max_batch_size=1, max_queue=2)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit([np.zeros((1, 2, 2), np.float32)] * 2))
            await asyncio.sleep(0.01)
            with pytest.raises(Overloaded):
                await batcher.submit([np.zeros((1, 2, 2), np.float32)])
            assert len(await first) == 2
            assert batcher.pending == 0
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_a_failing_batch_fails_its_requests_not_the_worker() -> None:
    calls = []

    def flaky(batch: np.ndarray):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return np.ones((len(batch), 2)), np.ones((len(batch), 2))

    async def scenario() -> None:
        batcher = MicroBatcher(flaky, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit([np.zeros((1, 2, 2), np.float32)])
            assert len(await batcher.submit([np.zeros((1, 2, 2), np.float32)])) == 1
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_drift_is_small_in_distribution_and_large_after_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = Reference(mean=np.zeros(32), std=np.ones(32), n=100)
    monitor = Monitor(drift_window=200, drift_threshold=0.5, min_samples=20, reference=reference)
    for _ in range(200):
        monitor.observe(np.array([0.9, 0.1]), rng.normal(0, 1, 32))
    assert monitor.snapshot()["drift_score"] < 0.2 and not monitor.snapshot()["drift_alert"]
    for _ in range(200):
        monitor.observe(np.array([0.9, 0.1]), rng.normal(1.5, 1, 32))
    assert monitor.snapshot()["drift_score"] > 1.0 and monitor.snapshot()["drift_alert"]


def test_low_confidence_alert_turns_on_once_and_clears(caplog: pytest.LogCaptureFixture) -> None:
    monitor = Monitor(confidence_window=10, low_confidence=0.6, min_samples=10)
    assert monitor.snapshot()["drift_score"] is None  # no reference: no drift figure
    with caplog.at_level(logging.WARNING, logger="dinotune.serve"):
        for _ in range(30):
            monitor.observe(np.array([0.4, 0.35, 0.25]), np.zeros(4))
    assert monitor.snapshot()["low_confidence_alert"]
    assert abs(monitor.snapshot()["rolling_mean_confidence"] - 0.4) < 1e-9
    assert sum("below" in r.getMessage() for r in caplog.records) == 1
    for _ in range(10):
        monitor.observe(np.array([0.95, 0.05]), np.zeros(4))
    assert not monitor.snapshot()["low_confidence_alert"]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"GIF89a-but-not-really" + b"\x00" * 8, 400),
        (b"just text", 415),
        (bomb_png(), 413),
        (bomb_png(3000, 3000), 413),
    ],
)
def test_bad_uploads_map_to_http_status(data: bytes, status: int) -> None:
    with pytest.raises(UploadError) as info:
        decode_upload(data, "upload.bin", channels=3, max_pixels=4_000_000)
    assert info.value.status == status
    assert "upload.bin" in info.value.message and "/tmp" not in info.value.message


def test_good_upload_decodes_like_the_training_path(tmp_path) -> None:
    from dinotune.data.decode import read_image

    data = png_bytes(0, size=(20, 30))
    (tmp_path / "x.png").write_bytes(data)
    np.testing.assert_array_equal(
        decode_upload(data, "x", channels=3, max_pixels=10**6), read_image(tmp_path / "x.png", 3)
    )
