"""Cached dense features for frozen segmentation: the head's patch maps, extracted once, memory-mapped.

A frozen backbone gives the same maps for the same crop every epoch, so with the linear protocol's
augmentation (none, or a horizontal flip stored as a second view) an epoch needs only the head.
Layout: `<root>/<key>/`, `key` hashing the backbone's weights, the layers, the preprocessing and the views.
Inside, shards of `.npy` files (read with `np.load(mmap_mode="r")`, so an epoch pages maps in from disk
and the cache is never all in RAM): `maps-<name>-<layer>.npy` (n, views, D, h, w) float16 (relative
rounding 2^-11, far below what a head learns from), `masks-<name>.npy` (n, views, H, W) uint8, and
`shard-<name>.json` with each row's key (SHA-256 of the image's and the mask's bytes: content-addressed
like `features.cache`) and a SHA-256 of every array file, checked once per run; a shard that fails is
deleted and extracted again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dinotune.atomic import atomic_path, remove_stale_temps, write_text
from dinotune.backbones import Backbone
from dinotune.device import autocast
from dinotune.features.engines import weights_digest
from dinotune.features.hashes import ContentHashes, file_hash

log = logging.getLogger(__name__)
DENSE_VERSION = 1
SHARD_IMAGES = 128  # rows buffered before a shard is written (ViT-S last-4 at 224: ~0.6 MB per view)


def cache_views(mode_frozen: bool, augment: str, hflip: bool | None) -> tuple[int, str]:
    """(views to store, reason): 0 when the training augmentation cannot be replayed from stored maps."""
    if not mode_frozen:
        return 0, "the backbone trains, so its features change every step"
    if augment != "none":
        return 0, f"data.augment={augment} has random crops/intensity changes (data.augment=none caches features)"
    return (2, "augment=none + horizontal flip, stored as a second view") if hflip else (1, "augment=none")


def _sha256(path: Path) -> str:
    return file_hash(path)


class DenseFeatureCache:
    """Patch maps of `layers` for the crops a deterministic segmentation dataset yields."""

    def __init__(self, root: Path, backbone: Backbone, layers: Sequence[int], description: dict, views: int) -> None:
        self.backbone, self.layers, self.views = backbone, list(layers), views
        ident = {"version": DENSE_VERSION, "weights": weights_digest(backbone), "layers": self.layers,
                 "views": views, **description}  # fmt: skip
        self.dir = Path(root) / hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)
        self.hashes = ContentHashes(self.dir / "file_hashes.json")

    def keys(self, samples: Sequence[Any]) -> list[str]:
        """One content key per sample: its image's and its mask's bytes."""
        images = self.hashes.digests([Path(s.path) for s in samples])
        masks = self.hashes.digests([Path(s.label) for s in samples])
        return [hashlib.sha256(f"{i}|{m}".encode()).hexdigest() for i, m in zip(images, masks, strict=True)]

    def _index(self) -> dict[str, tuple[str, int]]:
        """Key -> (shard name, row) over every shard whose files match their checksums."""
        index: dict[str, tuple[str, int]] = {}
        for meta in sorted(self.dir.glob("shard-*.json")):
            name = meta.stem.removeprefix("shard-")
            try:
                info = json.loads(meta.read_text())
                if any(_sha256(self.dir / f) != digest for f, digest in info["files"].items()):
                    raise ValueError("an array file does not match its checksum")
                index.update({key: (name, row) for row, key in enumerate(info["keys"])})
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("dense feature cache: discarding shard %s (%s); it will be extracted again", name, err)
                for path in [meta, *self.dir.glob(f"*-{name}*.npy")]:
                    path.unlink(missing_ok=True)
        return index

    def dataset(self, source: Any, batch_size: int = 16, num_workers: int = 0) -> tuple[DenseDataset, int]:
        """A dataset of cached maps for `source`'s samples, extracting what is missing; and how many were."""
        keys = self.keys(source.samples)
        index = self._index()
        todo = sorted({k: i for i, k in enumerate(keys) if k not in index}.values())
        if todo:
            self._extract(source, todo, keys, batch_size, num_workers)
            index = self._index()
        rows = [index[k] for k in keys if k in index]
        return DenseDataset(self.dir, rows, len(self.layers), self.views), len(todo)

    @torch.inference_mode()
    def _maps(self, images: Tensor) -> list[Tensor]:
        device = next(self.backbone.parameters()).device
        with autocast(device):
            out = self.backbone.get_intermediate_layers(images.to(device), n=self.layers, reshape=True, norm=True)
        if len(out) != len(self.layers):
            raise ValueError(f"layers {self.layers} do not all exist in a backbone of {self.backbone.n_blocks} units")
        return [m.float().cpu() for m in out]

    def _extract(self, source: Any, todo: list[int], keys: list[str], batch_size: int, workers: int) -> None:
        subset = torch.utils.data.Subset(source, todo)
        loader = DataLoader(subset, batch_size=batch_size, num_workers=workers, pin_memory=torch.cuda.is_available())
        writer = _DenseShardWriter(self.dir, self.views)
        try:
            for batch in loader:
                images, masks = batch["image"], batch["mask"]
                views = [self._maps(images)] + ([self._maps(images.flip(-1))] if self.views == 2 else [])
                view_masks = [masks] + ([masks.flip(-1)] if self.views == 2 else [])
                writer.add([keys[int(i)] for i in batch["index"]], views, view_masks)
        finally:
            writer.flush()  # an interrupted extraction keeps its finished shards


class _DenseShardWriter:
    """Buffers up to SHARD_IMAGES rows, then writes them as one shard (arrays first, the index last)."""

    def __init__(self, folder: Path, views: int) -> None:
        self.folder, self.views = folder, views
        self.keys: list[str] = []
        self.maps: list[list[np.ndarray]] = []  # per batch: per layer (b, views, D, h, w)
        self.masks: list[np.ndarray] = []

    def add(self, keys: list[str], views: list[list[Tensor]], masks: list[Tensor]) -> None:
        self.keys += keys
        self.maps.append([torch.stack([v[i] for v in views], 1).half().numpy() for i in range(len(views[0]))])
        self.masks.append(torch.stack(masks, 1).to(torch.uint8).numpy())
        if len(self.keys) >= SHARD_IMAGES:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        name = hashlib.sha256(json.dumps(self.keys).encode()).hexdigest()[:16]
        arrays = {f"maps-{name}-{i}.npy": np.concatenate([m[i] for m in self.maps]) for i in range(len(self.maps[0]))}
        arrays[f"masks-{name}.npy"] = np.concatenate(self.masks)
        for file, array in arrays.items():
            with atomic_path(self.folder / file) as tmp, open(tmp, "wb") as handle:
                np.save(handle, array)
        files = {file: _sha256(self.folder / file) for file in arrays}
        write_text(self.folder / f"shard-{name}.json", json.dumps({"keys": self.keys, "files": files}))
        self.keys, self.maps, self.masks = [], [], []


class _ViewPicker:
    """Seeded like an albumentations pipeline (`EpochSeeded` calls `set_random_seed` before each item), so
    which view an item shows is reproducible, and a resumed run sees the same flips."""

    def __init__(self) -> None:
        self.generator = np.random.default_rng(0)

    def set_random_seed(self, seed: int) -> None:
        self.generator = np.random.default_rng(seed)

    def pick(self, views: int) -> int:
        return int(self.generator.integers(views)) if views > 1 else 0


class DenseDataset(Dataset):
    """Items {"maps": [per layer (D, h, w) float32], "mask": (H, W) long, "index"}: one random stored view
    (the horizontal flip at p=0.5 when two are stored). Arrays are memory-mapped on first use in each worker."""

    def __init__(self, folder: Path, rows: list[tuple[str, int]], layers: int, views: int) -> None:
        self.folder, self.rows, self.layers, self.views = folder, rows, layers, views
        self.transform = self  # EpochSeeded seeds `transform.pipeline`
        self.pipeline = _ViewPicker()
        self._open: dict[str, list[np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}  # workers map the files themselves; never pickle arrays

    def _arrays(self, shard: str) -> list[np.ndarray]:
        if shard not in self._open:
            files = [f"maps-{shard}-{i}.npy" for i in range(self.layers)] + [f"masks-{shard}.npy"]
            self._open[shard] = [np.load(self.folder / f, mmap_mode="r") for f in files]
        return self._open[shard]

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard, row = self.rows[index]
        *maps, masks = self._arrays(shard)
        view = self.pipeline.pick(self.views)
        return {
            "maps": [torch.from_numpy(np.asarray(m[row, view], dtype=np.float32)) for m in maps],
            "mask": torch.from_numpy(np.asarray(masks[row, view], dtype=np.int64)),
            "index": index,
        }


def dense_sets(
    sets: dict[str, Any],
    backbone: Backbone,
    layers: Sequence[int],
    views: int,
    root: Path,
    description: dict,
    info: Callable[[str], None],
    num_workers: int = 0,
) -> dict[str, Any]:
    """`sets` with train and val replaced by cached maps; train's crops are val's deterministic transform."""
    out = dict(sets)
    for split, split_views in (("train", views), ("val", 1)):
        cache = DenseFeatureCache(root, backbone, layers, description, split_views)
        source = copy.copy(sets[split])
        source.transform = sets["val"].transform  # augment=none: the same resize + crop as val, flips stored
        out[split], extracted = cache.dataset(source, num_workers=num_workers)
        info(f"dense feature cache: {split} {len(out[split])} crops x {split_views} view(s) "
             f"({extracted} newly extracted) in {cache.dir}")  # fmt: skip
    return out
