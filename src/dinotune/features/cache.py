"""On-disk feature cache: extract each image once, reuse it in every later run.

Layout: `<root>/<key>/` where `key` hashes the backbone identity and the preprocessing, so changing
either starts a fresh cache. Inside:
- `shard-*.safetensors`: the features of a set of images, each row named in the shard's metadata by
  the SHA-256 of its image file's bytes (content-addressed: a file's features follow its content, so a
  rewritten or swapped file gets its own features, and editing one image re-extracts only that image).
  Each shard carries a checksum of its data, verified whenever it is read (see `shards`).
- `file_hashes.json`: the stat table that decides when a file must be hashed again (see `hashes`).

Shards are written every `shard_images` images (or `SHARD_SECONDS`) while extraction runs, each
atomically, so an interrupted run keeps what it extracted and a rerun extracts only the rest. Anything
unreadable or inconsistent (a torn or bit-flipped shard, a damaged hash table) is rebuilt with one
warning, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dinotune.atomic import remove_stale_temps, write_text
from dinotune.backbones import Backbone
from dinotune.data.decode import read_image
from dinotune.data.preprocessing import Preprocessing
from dinotune.errors import DataError
from dinotune.features.engine import FeatureExtractor
from dinotune.features.extract import feature_kinds
from dinotune.features.hashes import ContentHashes
from dinotune.features.shards import ShardError, load_shard, read_hashes, write_shard

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: checksummed shards, stat table with ctime and inode
SHARD_IMAGES = 1024  # images per shard while extracting: what an interruption can lose at most ...
SHARD_SECONDS = 60.0  # ... or this much extraction time, whichever comes first
Index = dict[str, tuple[Path, int]]  # image digest -> (shard, row)


class _ImageFiles(Dataset):
    """Decodes images for extraction; a bad file yields ok=False instead of stopping the run."""

    def __init__(self, paths: Sequence[Path], transform: Any, prep: Preprocessing) -> None:
        self.paths, self.transform = list(paths), transform
        self.channels, self.size, self.scaling = prep.channels, prep.image_size, prep.scaling_config()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image = self.transform(read_image(self.paths[index], self.channels, self.scaling))["image"]
            return {"image": image, "index": index, "ok": True, "error": ""}
        except DataError as err:
            placeholder = torch.zeros(self.channels, self.size, self.size)
            return {"image": placeholder, "index": index, "ok": False, "error": str(err)}


@dataclass
class CachedFeatures:
    """Features of the requested images, in request order, and the files that could not be read."""

    features: dict[str, Tensor]
    paths: list[Path]
    bad_files: dict[Path, str]
    extracted: int  # how many images this call had to run through the backbone


class _ShardWriter:
    """Collects extracted rows and writes them out as a shard every `max_images` images or `max_seconds`."""

    def __init__(self, folder: Path, max_images: int, max_seconds: float = SHARD_SECONDS) -> None:
        self.folder, self.max_images, self.max_seconds = folder, max_images, max_seconds
        self.hashes: list[str] = []
        self.chunks: dict[str, list[Tensor]] = {}
        self.since = time.monotonic()
        self.written: list[tuple[Path, list[str]]] = []

    def add(self, hashes: list[str], features: dict[str, Tensor]) -> None:
        if not self.hashes:
            self.since = time.monotonic()
        self.hashes.extend(hashes)
        for kind, value in features.items():
            self.chunks.setdefault(kind, []).append(value)
        if len(self.hashes) >= self.max_images or time.monotonic() - self.since >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.hashes:
            return
        tensors = {k: torch.cat(v) for k, v in self.chunks.items()}
        self.written.append((write_shard(self.folder, self.hashes, tensors), self.hashes))
        self.hashes, self.chunks = [], {}


class FeatureCache:
    """Features of image files for one backbone and preprocessing, extracted once and kept on disk."""

    def __init__(
        self,
        root: Path,
        backbone: Backbone,
        preprocessing: Preprocessing,
        shard_images: int = SHARD_IMAGES,
        engine: str | None = None,
    ) -> None:
        """`engine`: how features are computed (default: `DINOTUNE_ENGINE`, else auto; see `features.engine`)."""
        self.backbone, self.preprocessing, self.shard_images = backbone, preprocessing, shard_images
        self.engine, self.graph_dir = engine, Path(root) / "engines"
        self.last_engine: dict[str, Any] | None = None  # the engine choice of the last extraction
        self.kinds = feature_kinds(backbone)
        description = {
            "version": CACHE_VERSION,
            "backbone": backbone.info.identity,
            "arch": backbone.info.arch,
            "preprocessing": preprocessing.__dict__,
            "kinds": list(self.kinds),
        }
        key = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)
        if not (self.dir / "cache.json").exists():
            write_text(self.dir / "cache.json", json.dumps(description, indent=2, default=str))
        self.hashes = ContentHashes(self.dir / "file_hashes.json")

    def _discard(self, shard: Path, err: Exception) -> None:
        log.warning("feature cache: discarding shard %s (%s); its images will be extracted again", shard, err)
        shard.unlink(missing_ok=True)

    def _index(self) -> Index:
        index: Index = {}
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            try:
                digests = read_hashes(shard, self.kinds)
            except ShardError as err:
                self._discard(shard, err)
                continue
            index.update({digest: (shard, row) for row, digest in enumerate(digests)})
        return index

    def get(
        self, paths: Sequence[Path | str], batch_size: int = 32, num_workers: int = 0, progress: bool = True
    ) -> CachedFeatures:
        """Features for `paths`, extracting only images whose content is not cached yet."""
        paths = [Path(p) for p in paths]
        missing_files = [p for p in paths if not p.is_file()]
        if missing_files:
            raise DataError(f"{len(missing_files)} image file(s) do not exist, e.g. {missing_files[0]}.")
        hashes = self.hashes.digests(paths)
        bad: dict[Path, str] = {}
        extracted = 0
        for _attempt in range(3):  # a shard failing its checksum is deleted, and its images extracted again
            index = self._index()
            todo = sorted({h: p for h, p in zip(hashes, paths, strict=True) if h not in index and p not in bad}.items())
            if todo:
                new_bad, written = self._extract(
                    [p for _, p in todo], [h for h, _ in todo], batch_size, num_workers, progress
                )
                bad.update(new_bad)
                extracted += len(todo)
                for shard, digests in written:
                    index.update({digest: (shard, row) for row, digest in enumerate(digests)})
            result = self._assemble(paths, hashes, index, dict(bad), extracted)
            if result is not None:
                return result
        raise DataError(
            f"Feature cache '{self.dir}': shards fail their checksum right after being written (a failing "
            "disk?); delete that folder and run again, or set cache_dir to another disk."
        )

    def _extract(
        self, paths: list[Path], hashes: list[str], batch_size: int, num_workers: int, progress: bool
    ) -> tuple[dict[Path, str], list[tuple[Path, list[str]]]]:
        """Run the images through the backbone, writing shards as it goes; returns (bad files, shards)."""
        from tqdm.auto import tqdm

        prep = self.preprocessing
        dataset = _ImageFiles(paths, prep.transform(self.backbone.input_multiple), prep)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
        writer = _ShardWriter(self.dir, self.shard_images)
        extractor = FeatureExtractor(
            self.backbone, self.kinds, engine=self.engine, graph_dir=self.graph_dir, expected_images=len(paths)
        )
        bad: dict[Path, str] = {}
        try:
            with tqdm(
                total=len(paths), desc="extracting features", unit="img", disable=None if progress else True
            ) as bar:
                for batch in loader:
                    ok = batch["ok"]
                    for i in torch.nonzero(~ok).flatten().tolist():
                        bad[paths[batch["index"][i]]] = batch["error"][i]
                    if ok.any():
                        digests = [hashes[i] for i in batch["index"][ok].tolist()]
                        writer.add(digests, extractor(batch["image"][ok]))
                    bar.update(len(ok))
        finally:
            writer.flush()  # an interrupted run (Ctrl-C, a crash) keeps every finished batch
            self.last_engine = extractor.describe()
        for path, error in bad.items():
            log.warning("skipping unreadable image %s: %s", path, error)
        return bad, writer.written

    def _assemble(
        self, paths: list[Path], hashes: list[str], index: Index, bad: dict[Path, str], extracted: int
    ) -> CachedFeatures | None:
        """Copy each requested row into preallocated outputs, one verified shard in memory at a time.

        None when a shard fails its checks: it is deleted, and `get` extracts its images again.
        """
        kept: list[Path] = []
        plan: dict[Path, tuple[list[int], list[int]]] = {}  # shard -> (output positions, shard rows)
        for path, digest in zip(paths, hashes, strict=True):
            if digest not in index:
                bad.setdefault(path, "could not be decoded")
                continue
            shard, row = index[digest]
            positions, rows = plan.setdefault(shard, ([], []))
            positions.append(len(kept))
            rows.append(row)
            kept.append(path)
        features: dict[str, Tensor] = {}
        for shard, (positions, rows) in sorted(plan.items()):
            try:
                _, tensors = load_shard(shard, self.kinds)
                for kind, tensor in tensors.items():
                    out = features.setdefault(kind, tensor.new_empty((len(kept), tensor.shape[1])))
                    if out.shape[1] != tensor.shape[1]:
                        raise ShardError(f"its {kind} features have {tensor.shape[1]} values, others {out.shape[1]}")
                    out[positions] = tensor[rows]
            except ShardError as err:
                self._discard(shard, err)
                return None
        return CachedFeatures(features=features, paths=kept, bad_files=bad, extracted=extracted)
