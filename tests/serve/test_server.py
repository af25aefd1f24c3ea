"""The real server on loopback: good requests answered, every bad one a precise 4xx, and it stays up."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from dinotune.serve import ServeConfig, create_app, load_engine
from tests.serve.helpers import CLASSES, bomb_png, png_bytes, running

LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def base(model_folder: Path) -> Iterator[str]:
    config = ServeConfig(
        max_upload_bytes=LIMIT, max_pixels=1_000_000, max_batch_size=8, max_wait_ms=10, alert_min_samples=5
    )
    with running(create_app(model_folder, config)) as url:
        yield url


def _post_file(base: str, data: bytes, name: str = "x.png", path: str = "/predict") -> httpx.Response:
    return httpx.post(f"{base}{path}", files={"file": (name, data, "application/octet-stream")}, timeout=30)


def _alive(base: str) -> None:
    assert httpx.get(f"{base}/health", timeout=5).json() == {"status": "ok"}
    response = _post_file(base, png_bytes(99))
    assert response.status_code == 200, response.text


def test_health_ready_info(base: str, model_folder: Path) -> None:
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/ready").json()["ready"] is True
    info = httpx.get(f"{base}/info").json()
    assert info["classes"] == CLASSES and info["runtime"] == "torch" and info["task"] == "classify"
    assert info["preprocessing"]["image_size"] == 32 and info["dinotune_version"]


def test_predict_matches_the_model(base: str, model_folder: Path) -> None:
    engine = load_engine(model_folder)
    data = png_bytes(1)
    response = _post_file(base, data)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == sorted(
        CLASSES, key=lambda c: -next(p["probability"] for p in predictions if p["label"] == c)
    )
    # the same image through the engine directly: same probabilities
    from dinotune.serve.images import decode_upload

    prep = engine.card.preprocessing
    image = prep.transform(engine.input_multiple)(decode_upload(data, "x", channels=3, max_pixels=10**6))["image"]
    probs, _ = engine.run(image[None].numpy())
    served = {p["index"]: p["probability"] for p in predictions}
    np.testing.assert_allclose([served[i] for i in range(3)], probs[0], atol=1e-5)
    assert abs(sum(served.values()) - 1) < 1e-4


def test_base64_json_top_k_and_batch(base: str) -> None:
    encoded = base64.b64encode(png_bytes(2)).decode()
    one = httpx.post(f"{base}/predict?top_k=2", json={"image": encoded}, timeout=30)
    assert one.status_code == 200 and len(one.json()["predictions"]) == 2
    many = httpx.post(
        f"{base}/predict/batch", json={"images": [encoded, "data:image/png;base64," + encoded]}, timeout=30
    )
    assert many.status_code == 200
    results = many.json()["results"]
    assert len(results) == 2 and results[0] == results[1] and len(results[0]["predictions"]) == 3
    files = [("files", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    multi = httpx.post(f"{base}/predict/batch", files=files, timeout=30)
    assert multi.status_code == 200 and len(multi.json()["results"]) == 3


def test_bad_uploads_get_the_right_4xx_and_the_server_stays_up(base: str) -> None:
    jpeg = png_bytes(3, size=(64, 64), fmt="JPEG")
    cases = {
        "truncated jpeg": (jpeg[: len(jpeg) // 2], 400, "truncated or corrupt"),
        "text file": (b"hello, I am not an image\n" * 10, 415, "not a supported image"),
        "empty": (b"", 400, "empty"),
        "bomb 50000x50000": (bomb_png(), 413, "pixels"),
        "over max_pixels": (bomb_png(2000, 2000), 413, "exceeds the server's limit"),
        "oversized body": (b"\xff\xd8\xff" + b"0" * (LIMIT + 10), 413, "exceeds the server's limit"),
    }
    for name, (data, status, words) in cases.items():
        response = _post_file(base, data, name=f"{name}.jpg")
        assert response.status_code == status, (name, response.text)
        assert words in response.json()["detail"], (name, response.json())
    for body, headers, status in [
        (b"garbage", {"content-type": "multipart/form-data"}, 400),  # no boundary
        (
            b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n',
            {"content-type": "multipart/form-data; boundary=xyz"},
            400,
        ),
        (b"{not json", {"content-type": "application/json"}, 400),
        (b'{"image": "***"}', {"content-type": "application/json"}, 400),
        (png_bytes(4), {"content-type": "image/png"}, 415),
    ]:
        response = httpx.post(f"{base}/predict", content=body, headers=headers, timeout=30)
        assert response.status_code == status, (body[:40], response.text)
    two = [("file", ("a.png", png_bytes(5), "image/png")), ("file", ("b.png", png_bytes(6), "image/png"))]
    assert httpx.post(f"{base}/predict", files=two, timeout=30).status_code == 400

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(LIMIT // 8192 + 4):
            yield b"\x00" * 8192

    streamed = httpx.post(
        f"{base}/predict", content=chunks(), timeout=30, headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert streamed.status_code == 413
    _alive(base)
    metrics = httpx.get(f"{base}/metrics").text
    for code in ("400", "413", "415"):
        assert f'dinotune_errors_total{{code="{code}"}}' in metrics


async def _burst(base: str, n: int) -> list[int]:
    good, bad = png_bytes(7), png_bytes(8, fmt="JPEG")[:200]
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:

        async def one(i: int) -> int:
            data = bad if i % 5 == 4 else good
            response = await client.post(f"{base}/predict", files={"file": ("x.png", data, "image/png")})
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_concurrent_burst_is_batched_and_memory_stays_bounded(base: str) -> None:
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    asyncio.run(_burst(base, 16))  # warm-up: allocator pools, thread pools
    before = process.memory_info().rss
    start = time.perf_counter()
    codes = []
    for _ in range(3):
        codes += asyncio.run(_burst(base, 32))
    elapsed = time.perf_counter() - start
    growth = (process.memory_info().rss - before) / 2**20
    bad = 3 * sum(1 for i in range(32) if i % 5 == 4)
    assert codes.count(400) == bad and codes.count(200) == len(codes) - bad, codes
    assert growth < 150, f"RSS grew by {growth:.0f} MiB over the burst"
    assert elapsed < 60
    metrics = httpx.get(f"{base}/metrics").text
    sizes = [line for line in metrics.splitlines() if line.startswith("dinotune_batch_size_bucket")]
    batched_1 = next(float(line.split()[-1]) for line in sizes if 'le="1.0"' in line)
    total = next(float(line.split()[-1]) for line in sizes if 'le="+Inf"' in line)
    assert batched_1 < total, "no request was micro-batched under concurrency"
    assert "dinotune_rolling_mean_confidence" in metrics and "dinotune_drift_score" in metrics
    _alive(base)


class _SlowEngine:
    """Wraps a real engine and makes each model call take 0.3 s, to fill the queue."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.card, self.name, self.runtime = engine.card, engine.name, "slow"
        self.input_multiple, self.reference, self.segments = engine.input_multiple, engine.reference, False
        self.preprocess = engine.preprocess

    def run(self, images: np.ndarray):
        time.sleep(0.3)
        return self.engine.run(images)


def test_full_queue_answers_503_with_retry_after(model_folder: Path) -> None:
    config = ServeConfig(max_queue=2, max_batch_size=1, retry_after_s=3)
    with running(create_app(_SlowEngine(load_engine(model_folder)), config)) as url:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                data = png_bytes(9)
                return list(
                    await asyncio.gather(
                        *(client.post(f"{url}/predict", files={"file": ("x.png", data)}) for _ in range(8))
                    )
                )

        responses = asyncio.run(burst())
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 503 in codes, codes
        assert set(codes) <= {200, 503}
        assert all(r.headers["retry-after"] == "3" for r in responses if r.status_code == 503)
        assert httpx.post(f"{url}/predict", files={"file": ("x.png", png_bytes(9))}, timeout=30).status_code == 200


def test_ready_is_503_while_a_model_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    with running(create_app(tmp_path), wait_ready=False) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        for _ in range(100):
            if "failed" in httpx.get(f"{url}/ready").text:
                break
            time.sleep(0.05)
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and "failed to load" in ready.json()["detail"]
        response = httpx.post(f"{url}/predict", files={"file": ("x.png", png_bytes(0))})
        assert response.status_code == 503 and "retry-after" in response.headers


def test_deeply_nested_json_is_a_400(base: str) -> None:
    body = "[" * 100_000 + "]" * 100_000
    answer = httpx.post(f"{base}/predict", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 400 and "nested" in answer.json()["detail"]
    _alive(base)
