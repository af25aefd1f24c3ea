"""Server throughput and p50/p99 latency under 16 concurrent clients on loopback, micro-batching on vs off.

The server runs in its own process (`dinotune.serve.serve`), the clients in this one (httpx, closed loop:
each client sends its next request when the previous answer arrives). Default model: random
`vit_tiny16` + linear head at 224 px, served by PyTorch and by its ONNX export; ViT-S/16 at 224 is
too slow on a 2-core CI machine for enough requests. Client and server share the CPU, so compare the
on/off ratio, not absolute numbers.

    python benchmarks/serve.py [--arch vit_tiny16] [--size 224] [--clients 16] [--requests 15]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import sample_images, write_result

from dinotune.export.onnx import export_model
from export import model_folder

SERVER = """
import sys
from dinotune.serve import ServeConfig, serve
serve(sys.argv[1], host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
      config=ServeConfig(max_batch_size=int(sys.argv[3]), max_wait_ms=float(sys.argv[4]), max_queue=256))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def load(url: str, images: list[bytes], clients: int, requests: int) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    codes: list[int] = []

    async def client(index: int, session: httpx.AsyncClient) -> None:
        for i in range(requests):
            data = images[(index * requests + i) % len(images)]
            start = time.perf_counter()
            response = await session.post(f"{url}/predict", files={"file": ("x.png", data, "image/png")})
            latencies.append(time.perf_counter() - start)
            codes.append(response.status_code)

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as session:
        await asyncio.gather(*(client(c, session) for c in range(2)))  # warm-up
        latencies.clear()
        codes.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client(c, session) for c in range(clients)))
        return latencies, codes, time.perf_counter() - start


def mean_batch(metrics: str) -> float:
    values = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith(("dinotune_batch_size_sum", "dinotune_batch_size_count"))
    }
    return values["dinotune_batch_size_sum"] / max(values["dinotune_batch_size_count"], 1)


def run(model: Path, images: list[bytes], batch: int, wait_ms: float, clients: int, requests: int) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(model), str(port), str(batch), str(wait_ms)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)
        latencies, codes, seconds = asyncio.run(load(url, images, clients, requests))
        batch_mean = mean_batch(httpx.get(f"{url}/metrics").text)
    finally:
        server.terminate()
        server.wait(timeout=30)
    ordered = sorted(latencies)
    return {
        "max_batch_size": batch,
        "max_wait_ms": wait_ms,
        "requests": len(latencies),
        "ok": codes.count(200),
        "throughput_rps": round(len(latencies) / seconds, 2),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "mean_batch_size": round(batch_mean, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_tiny16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=15, help="per client")
    parser.add_argument("--runtimes", default="torch,onnx")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
    root = Path(tempfile.mkdtemp(prefix="dinotune-bench-serve-"))
    folder = model_folder(root / "model", args.arch, args.size)
    image_dir = sample_images(32)
    images = [p.read_bytes() for p in sorted(image_dir.glob("*.png"))]
    models = {"torch": folder}
    if "onnx" in args.runtimes:
        export_model(folder, root / "onnx", calibration_images=image_dir, timing_repeats=1)
        models["onnx"] = root / "onnx"
    results = {}
    for runtime in args.runtimes.split(","):
        for label, batch, wait in (("batching_off", 1, 0.0), ("batching_on", 16, 5.0)):
            results[f"{runtime}_{label}"] = run(models[runtime], images, batch, wait, args.clients, args.requests)
            print(runtime, label, results[f"{runtime}_{label}"], flush=True)
        on, off = results[f"{runtime}_batching_on"], results[f"{runtime}_batching_off"]
        results[f"{runtime}_throughput_ratio_on_vs_off"] = round(on["throughput_rps"] / off["throughput_rps"], 2)
    write_result(
        "serve",
        {
            "model": f"random:{args.arch} + linear head, {args.size}px",
            "clients": args.clients,
            "requests_per_client": args.requests,
            "image_bytes_mean": int(np.mean([len(i) for i in images])),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
