"""On-disk feature cache: extract each image once, reuse it in every later run.

Layout: `<root>/<key>/` where `key` hashes the backbone identity and the preprocessing, so changing
either starts a fresh cache. Inside, `shard-*.safetensors` files each hold the features of a set of
images, named in the shard's metadata by the SHA-256 of the image file's bytes - so editing one image
re-extracts only that image. Shards are written atomically; a shard that cannot be read (torn by a
crash of another tool, a full disk, a copy gone wrong) is deleted and its images re-extracted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dinotune.atomic import atomic_path, write_text
from dinotune.backbones import Backbone
from dinotune.data.decode import read_image
from dinotune.data.preprocessing import Preprocessing
from dinotune.errors import DataError
from dinotune.features.extract import extract_features, feature_kinds

log = logging.getLogger(__name__)
CACHE_VERSION = 1


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


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CachedFeatures:
    """Features of the requested images, in request order, and the files that could not be read."""

    features: dict[str, Tensor]
    paths: list[Path]
    bad_files: dict[Path, str]
    extracted: int  # how many images this call had to run through the backbone


class FeatureCache:
    def __init__(self, root: Path, backbone: Backbone, preprocessing: Preprocessing) -> None:
        self.backbone, self.preprocessing = backbone, preprocessing
        description = {
            "version": CACHE_VERSION,
            "backbone": backbone.info.identity,
            "arch": backbone.info.arch,
            "preprocessing": preprocessing.__dict__,
            "kinds": list(feature_kinds(backbone)),
        }
        key = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "cache.json").exists():
            write_text(self.dir / "cache.json", json.dumps(description, indent=2, default=str))
        self._hashes_file = self.dir / "file_hashes.json"

    # -- hashing with a stat cache, so unchanged files are not re-read on every run
    def _hashes(self, paths: Sequence[Path]) -> list[str]:
        known: dict[str, list] = {}
        if self._hashes_file.exists():
            try:
                known = json.loads(self._hashes_file.read_text())
            except ValueError:
                known = {}
        result, changed = [], False
        for path in paths:
            stat = path.stat()
            entry = known.get(str(path.resolve()))
            if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
                result.append(entry[2])
                continue
            digest = file_hash(path)
            known[str(path.resolve())] = [stat.st_size, stat.st_mtime_ns, digest]
            result.append(digest)
            changed = True
        if changed:
            write_text(self._hashes_file, json.dumps(known))
        return result

    def _index(self) -> dict[str, tuple[Path, int]]:
        index: dict[str, tuple[Path, int]] = {}
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            try:
                with safe_open(str(shard), framework="pt") as handle:
                    hashes = json.loads(handle.metadata()["hashes"])
                    rows = {handle.get_slice(k).get_shape()[0] for k in handle.keys()}  # noqa: SIM118
                if rows != {len(hashes)}:
                    raise ValueError("row count does not match its hash list")
            except Exception as err:  # a torn or foreign file: rebuild rather than fail
                log.warning("feature cache: discarding unreadable shard %s (%s)", shard.name, err)
                shard.unlink(missing_ok=True)
                continue
            for row, digest in enumerate(hashes):
                index[digest] = (shard, row)
        return index

    def get(self, paths: Sequence[Path | str], batch_size: int = 32, num_workers: int = 0,
            progress: bool = True) -> CachedFeatures:
        """Features for `paths`, extracting only images whose content is not cached yet."""
        paths = [Path(p) for p in paths]
        missing_files = [p for p in paths if not p.is_file()]
        if missing_files:
            raise DataError(f"{len(missing_files)} image file(s) do not exist, e.g. {missing_files[0]}.")
        hashes = self._hashes(paths)
        index = self._index()
        todo = sorted({h: p for h, p in zip(hashes, paths, strict=True) if h not in index}.items())
        bad: dict[Path, str] = {}
        if todo:
            bad = self._extract([p for _, p in todo], [h for h, _ in todo], batch_size, num_workers, progress)
            index = self._index()
        return self._assemble(paths, hashes, index, bad, extracted=len(todo))

    def _extract(self, paths: list[Path], hashes: list[str], batch_size: int, num_workers: int,
                 progress: bool) -> dict[Path, str]:
        from tqdm.auto import tqdm

        patch = self.backbone.input_multiple
        prep = self.preprocessing
        dataset = _ImageFiles(paths, prep.transform(patch), prep)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            persistent_workers=False, pin_memory=torch.cuda.is_available())
        chunks: dict[str, list[Tensor]] = {}
        good: list[str] = []
        bad: dict[Path, str] = {}
        with tqdm(total=len(paths), desc="extracting features", unit="img", disable=not progress) as bar:
            for batch in loader:
                ok = batch["ok"]
                for i in torch.nonzero(~ok).flatten().tolist():
                    bad[paths[batch["index"][i]]] = batch["error"][i]
                if ok.any():
                    for kind, value in extract_features(self.backbone, batch["image"][ok]).items():
                        chunks.setdefault(kind, []).append(value)
                    good.extend(hashes[i] for i in batch["index"][ok].tolist())
                bar.update(len(ok))
        for path, error in bad.items():
            log.warning("skipping unreadable image %s: %s", path, error)
        if good:
            tensors = {k: torch.cat(v).contiguous() for k, v in chunks.items()}
            name = hashlib.sha256("".join(good).encode()).hexdigest()[:16]
            with atomic_path(self.dir / f"shard-{name}.safetensors") as tmp:
                save_file(tensors, str(tmp), metadata={"hashes": json.dumps(good)})
        return bad

    def _assemble(self, paths: list[Path], hashes: list[str], index: dict[str, tuple[Path, int]],
                  bad: dict[Path, str], extracted: int) -> CachedFeatures:
        shards: dict[Path, dict[str, Tensor]] = {}
        rows: dict[str, list[Tensor]] = {}
        kept: list[Path] = []
        for path, digest in zip(paths, hashes, strict=True):
            if digest not in index:
                bad.setdefault(path, "could not be decoded")
                continue
            shard, row = index[digest]
            if shard not in shards:
                shards[shard] = load_file(str(shard))
            for kind, tensor in shards[shard].items():
                rows.setdefault(kind, []).append(tensor[row])
            kept.append(path)
        features = {k: torch.stack(v) for k, v in rows.items()}
        return CachedFeatures(features=features, paths=kept, bad_files=bad, extracted=extracted)
