"""`dinotune embed`: CLS and mean-patch embeddings of a folder of images, in one safetensors file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from safetensors.torch import save_file

from dinotune.atomic import atomic_path
from dinotune.backbones import Backbone, load_backbone
from dinotune.config import BackboneConfig, StrictModel, cache_home, to_yaml
from dinotune.data.formats import list_images
from dinotune.data.preprocessing import Preprocessing
from dinotune.device import default_workers
from dinotune.errors import ConfigError, DataError
from dinotune.features.cache import FeatureCache
from dinotune.verbs.common import Result, check_image_size


class EmbedConfig(StrictModel):
    data_dir: Path = Field(description="Folder of images, searched recursively.")
    out: Path = Field(description="Output .safetensors file.")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    image_size: int = Field(224, ge=16, description="Input side; a multiple of the backbone's patch size.")
    resize: Literal["crop", "pad"] = Field("crop", description="crop: shorter side + centre crop; pad: letterbox.")
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(default_factory=default_workers, ge=0)
    cache_dir: Path | None = Field(None, description="Feature cache folder (default: $DINOTUNE_HOME/features).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")


def make_cache(
    backbone: Backbone, image_size: int, resize: str = "crop", cache_dir: Path | None = None
) -> FeatureCache:
    check_image_size(image_size, backbone)
    prep = Preprocessing(
        image_size=image_size,
        resize=resize,
        channels=backbone.info.in_chans,
        mean=backbone.info.mean,
        std=backbone.info.std,
    )
    return FeatureCache(cache_dir or cache_home() / "features", backbone, prep)


def run_embed(
    cfg: EmbedConfig, backbone: Backbone | None = None, progress: bool = True, overwrite: bool = False
) -> Result:
    """Embeddings of every readable image under `cfg.data_dir`; metrics: count, dim, unreadable files."""
    if cfg.out.exists() and not overwrite:
        raise ConfigError(f"'{cfg.out}' already exists; pass --overwrite to replace it, or choose another --out.")
    if not cfg.data_dir.is_dir():
        raise DataError(f"Image folder '{cfg.data_dir}' does not exist.")
    paths = list_images(cfg.data_dir)
    if not paths:
        raise DataError(f"No images found under '{cfg.data_dir}' (looked for jpg, png, tif, bmp, webp, ...).")
    if backbone is None:
        backbone = load_backbone(
            cfg.backbone.source,
            arch=cfg.backbone.arch,
            in_chans=cfg.backbone.in_chans or 3,
            device=None if cfg.device == "auto" else cfg.device,
        )
    cache = make_cache(backbone, cfg.image_size, cfg.resize, cfg.cache_dir)
    result = cache.get(paths, batch_size=cfg.batch_size, num_workers=cfg.num_workers, progress=progress)
    if not result.paths:
        raise DataError(f"None of the {len(paths)} images under '{cfg.data_dir}' could be read.")
    tensors = {k: v for k, v in result.features.items() if k in ("cls", "patch_mean")}
    files = [str(p.relative_to(cfg.data_dir)) for p in result.paths]
    metadata = {
        "files": json.dumps(files),
        "backbone": json.dumps(backbone.info.to_dict()),
        "config": to_yaml(cfg),
        "image_size": str(cache.preprocessing.image_size),
    }
    with atomic_path(cfg.out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Result(
        cfg.out,
        {
            "count": len(files),
            "dim": int(tensors["cls"].shape[1]),
            "bad_files": {str(k): v for k, v in result.bad_files.items()},
            "engine": cache.last_engine,
        },
    )


def embed(data_dir: str | Path, out: str | Path, backbone: str | Backbone | None = None, **options) -> Result:
    """Python API of `dinotune embed`; options are EmbedConfig fields (image_size, batch_size, ...)."""
    from dinotune.config import validate

    loaded = backbone if not isinstance(backbone, (str, type(None))) else None
    data = {"data_dir": data_dir, "out": out, **options}
    if isinstance(backbone, str):
        data["backbone"] = {"source": backbone}
    return run_embed(validate(EmbedConfig, data), backbone=loaded)
