"""Test helpers: a tiny model folder, image bytes good and bad, a real uvicorn server on a free loopback port."""

from __future__ import annotations

import io
import socket
import struct
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
