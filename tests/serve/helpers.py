"""Test helpers: a tiny model folder, image bytes good and bad, a real uvicorn server on a free loopback port."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image

from dinotune import load_backbone
from dinotune.data.preprocessing import Preprocessing
from dinotune.heads.linear import LinearHead
from dinotune.model import Classifier, ModelCard, save_model

CLASSES = ["cat", "dog", "fox"]


def make_model_folder(folder: Path, arch: str = "vit_test16", choice: str = "cls", image_size: int = 32) -> Path:
    backbone = load_backbone(f"random:{arch}", device="cpu")
    gen = torch.Generator().manual_seed(0)
    dim = (2 if choice == "cls+patch_mean" else 1) * backbone.embed_dim
    head = LinearHead(
        torch.randn(3, dim, generator=gen),
        torch.randn(3, generator=gen),
        torch.zeros(dim),
        torch.ones(dim),
        feature_choice=choice,
    )
    info = backbone.info
    card = ModelCard(
        task="classify",
        classes=list(CLASSES),
        preprocessing=Preprocessing(image_size=image_size, mean=info.mean, std=info.std),
        backbone={"source": info.source, "in_chans": 3, "seed": 0, "identity": info.identity},
        head={},
        license=info.license,
    )
    return save_model(folder, Classifier(backbone, head).eval(), card)


def png_bytes(seed: int = 0, size: tuple[int, int] = (40, 50), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid ~70-byte PNG whose header declares width x height RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@contextmanager
def running(app, wait_ready: bool = True) -> Iterator[str]:
    """Run `app` with uvicorn in a thread on 127.0.0.1 (a free port); yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400 if wait_ready else 0):  # the model loads in the background: wait for /ready
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                break
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_process(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a server command in its own process group; yield its base URL once /ready answers 200."""
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as log:  # not a pipe: a chatty server must never block on it
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield _wait_ready(process, f"http://127.0.0.1:{port}", log)
        finally:
            _stop(process)


def _wait_ready(process: subprocess.Popen, base: str, log) -> str:
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited ({process.returncode}):\n{log.read()[-4000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not become ready in 90 s")
        time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the whole group (workers too), SIGKILL if it does not stop within 20 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
