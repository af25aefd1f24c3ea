"""Feature shards: safetensors files holding the features of a list of images, each with a checksum.

A shard's metadata holds `hashes` (JSON list: the content digest of the image of each row) and `sha256`,
a SHA-256 over that list and every tensor's name, dtype, shape and bytes. safetensors checks only the
header, so without it a flipped bit in the data would be served as features; `load_shard` recomputes
the checksum and refuses a shard that does not match. Shards are written atomically, so a crash leaves
whole shards only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from dinotune.atomic import atomic_path

SHARD_FORMAT = "dinotune-features-2"


class ShardError(Exception):
    """A shard is torn, foreign or fails its checksum; the cache deletes it and extracts again."""


def checksum(hashes_json: str, tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256(hashes_json.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(tensor.view(torch.uint8).numpy()))  # the bytes themselves, no copy
    return digest.hexdigest()


def write_shard(folder: Path, hashes: Sequence[str], tensors: dict[str, Tensor]) -> Path:
    """Write one shard atomically; its name derives from its images, so rewriting the same set is idempotent."""
    hashes_json = json.dumps(list(hashes))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    name = hashlib.sha256(hashes_json.encode()).hexdigest()[:16]
    path = folder / f"shard-{name}.safetensors"
    metadata = {"format": SHARD_FORMAT, "hashes": hashes_json, "sha256": checksum(hashes_json, tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _check_layout(hashes: object, shapes: dict[str, Sequence[int]], kinds: Sequence[str]) -> list[str]:
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise ShardError("its hash list is not a list of strings")
    if set(shapes) != set(kinds):
        raise ShardError(f"it holds {sorted(shapes)}, not the kinds {sorted(kinds)}")
    if any(len(shape) != 2 or shape[0] != len(hashes) for shape in shapes.values()):
        raise ShardError("its row count does not match its hash list")
    return hashes


def read_hashes(path: Path, kinds: Sequence[str]) -> list[str]:
    """The image digests a shard holds, from its header only (cheap: no tensor data is read)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {k: handle.get_slice(k).get_shape() for k in handle.keys()}  # noqa: SIM118
        if metadata.get("format") != SHARD_FORMAT or "sha256" not in metadata:
            raise ShardError(f"it is not a {SHARD_FORMAT} shard")
        return _check_layout(json.loads(metadata["hashes"]), shapes, kinds)
    except ShardError:
        raise
    except Exception as err:  # safetensors and json raise several types for a torn or foreign file
        raise ShardError(f"unreadable header: {err}") from None


def load_shard(path: Path, kinds: Sequence[str]) -> tuple[list[str], dict[str, Tensor]]:
    """A shard's digests and tensors, after checking its checksum."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as err:
        raise ShardError(f"unreadable: {err}") from None
    hashes_json = metadata.get("hashes", "")
    try:
        hashes = json.loads(hashes_json)
    except ValueError:
        raise ShardError("its hash list is not JSON") from None
    _check_layout(hashes, {k: tuple(v.shape) for k, v in tensors.items()}, kinds)
    if checksum(hashes_json, tensors) != metadata.get("sha256"):
        raise ShardError("its data does not match its checksum")
    return hashes, tensors
