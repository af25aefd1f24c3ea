"""`dinotune quickstart`: the whole frozen-feature loop on a bundled real dataset, in minutes on a CPU.

Data check -> feature extraction (cached) -> linear-probe sweep + kNN -> metrics -> predictions on
a few test images. The dataset is ELPV (real electroluminescence images of solar cells, functional vs
defective; installed with `pip install "dinotune[elpv]"`), with scikit-learn's digits as fallback.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from dinotune.config import cache_home
from dinotune.data.bundled import digits_imagefolder, elpv_imagefolder
from dinotune.data.check import check_dataset
from dinotune.errors import DataError
from dinotune.run_folder import new_run_dir
from dinotune.verbs.common import Result
from dinotune.verbs.predict import predict
from dinotune.verbs.probe import probe

log = logging.getLogger("dinotune")
FALLBACK_BACKBONE = "random:vit_tiny16"


def find_cached_dinov3() -> str | None:
    """A DINOv3 model already in the local Hugging Face cache (smallest first), without any download."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = [
            r
            for r in scan_cache_dir().repos
            if r.repo_type == "model" and r.repo_id.lower().startswith("facebook/dinov3-")
        ]
    except Exception:  # no cache folder, or an unreadable one: nothing to offer
        return None
    return min(repos, key=lambda r: r.size_on_disk).repo_id if repos else None


def choose_backbone(backbone: str | None) -> tuple[str, str]:
    """(source, why): the flag, then $DINOTUNE_BACKBONE, then a cached DINOv3, then random weights."""
    if backbone:
        return backbone, "--backbone"
    if os.environ.get("DINOTUNE_BACKBONE"):
        return os.environ["DINOTUNE_BACKBONE"], "$DINOTUNE_BACKBONE"
    cached = find_cached_dinov3()
    if cached:
        return cached, "found in the local Hugging Face cache"
    return FALLBACK_BACKBONE, "no DINOv3 weights given or cached"


def bundled_dataset(per_class: int, image_size: int) -> tuple[Path, str]:
    home = cache_home() / "datasets"
    try:
        return elpv_imagefolder(
            home / f"elpv-{per_class}-{image_size}", per_class=per_class, size=image_size
        ), "ELPV solar cells (functional vs defective)"
    except DataError as err:
        log.warning("%s Falling back to scikit-learn's digits.", err)
        return digits_imagefolder(home / f"digits-{image_size}", size=image_size), "scikit-learn digits"


def quickstart(
    backbone: str | None = None,
    *,
    per_class: int = 300,
    image_size: int = 112,
    out: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Result:
    """The whole frozen-feature loop; returns the probe run."""
    source, why = choose_backbone(backbone)
    random_weights = source.startswith("random:")
    log.info("backbone: %s (%s)", source, why)
    if random_weights:
        log.warning(
            "\n" + "!" * 78 + "\n  RANDOM WEIGHTS: no DINOv3 weights were given, so this run uses a small random-weight"
            "\n  ViT. The numbers below only prove that the pipeline works. For real results pass"
            "\n  --backbone facebook/dinov3-vits16-pretrain-lvd1689m (after accepting the license and"
            "\n  logging in), a local Hugging Face folder, or an official .pth file.\n" + "!" * 78
        )
    root, name = bundled_dataset(per_class, image_size)
    log.info("dataset: %s at %s", name, root)
    report = check_dataset(root, task="classify")
    log.info("data check: %d errors, %d warnings", len(report.errors), len(report.warnings))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
        result = probe(
            {"root": root, "image_size": image_size},
            backbone=source,
            out=out or new_run_dir("quickstart"),
            cache_dir=cache_dir,
            progress=progress,
        )
    test_dir = root / "test"
    samples = sorted(test_dir.rglob("*.png"))[:: max(1, len(list(test_dir.rglob("*.png"))) // 4)][:4]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
        for p in predict(result.run_dir, samples):
            log.info("predict %s -> %s (%.2f)", p.path.relative_to(root), p.label, p.probability)
    log.info(
        "outputs in %s: model.json + head.safetensors (the model), metrics.json, predictions.csv, "
        "sweep.csv, config.yaml, log.txt",
        result.run_dir,
    )
    log.info("next: dinotune predict %s IMAGE...", result.run_dir)
    if random_weights:
        log.warning("reminder: RANDOM WEIGHTS - these numbers only prove the pipeline.")
    return result
