"""What only a CUDA machine can check: bf16 training steps, segmentation, extraction in bf16 against fp32,
and DDP with one process. Marked `cuda`; they skip without a GPU. Run them with benchmarks/gpu_check.sh."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from dinotune import load_backbone
from dinotune.features.engine import FeatureExtractor
from dinotune.features.extract import extract_features
from tests.training_fixtures import finetune_config, segment_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.sh)"),
]
GPU = {"accelerator": "gpu", "devices": 1, "progress_bar": False}


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def _finite_best(metrics: dict) -> float:
    value = float(metrics["best"]["value"])
    assert math.isfinite(value), metrics["best"]
    return value


def test_bf16_finetune_steps(digits: Path, tmp_path: Path) -> None:
    from dinotune.verbs.finetune import run_finetune

    cfg = finetune_config(digits, tmp_path / "run", trainer={**GPU, "max_epochs": 2, "precision": "bf16-mixed"})
    result = _quiet(run_finetune, cfg)
    assert result.metrics["steps"] > 0
    assert _finite_best(result.metrics) > 0.15  # 10 digit classes: learning, not chance (0.1)
    assert (result.run_dir / "model.json").is_file()


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_segmentation_steps(seg_root: Path, tmp_path: Path, mode: str, monkeypatch) -> None:
    from dinotune.verbs.segment import run_segment

    monkeypatch.setenv("DINOTUNE_HOME", str(tmp_path / "home"))  # linear: the dense cache lands here
    cfg = segment_config(seg_root, tmp_path / "run", mode=mode, trainer={**GPU, "max_epochs": 2})
    result = _quiet(run_segment, cfg)
    assert 0.0 <= result.metrics["summary"]["val/miou"] <= 1.0
    assert result.metrics["steps"] > 0
    assert any((tmp_path / "home" / "dense").rglob("maps-*.npy")) == (mode == "linear")


@pytest.mark.parametrize("arch", ["vit_test16", "convnext_test"])
def test_extraction_bf16_matches_fp32(arch: str) -> None:
    try:
        cpu = load_backbone(f"random:{arch}", device="cpu").eval()
    except Exception as err:  # an arch name this checkout lacks is a skip, not a GPU failure
        pytest.skip(f"random:{arch} unavailable: {err}")
    gpu = load_backbone(f"random:{arch}", device="cuda").eval()
    gpu.load_state_dict(cpu.state_dict())
    images = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = extract_features(cpu, images)
    extractor = FeatureExtractor(gpu)  # CUDA: eager under bf16 autocast (channels_last for ConvNeXt)
    got = extractor(images)
    assert extractor.choice is not None and extractor.choice.name == "eager"
    for kind, value in expected.items():
        assert got[kind].dtype == torch.float32 and got[kind].device.type == "cpu"
        cosine = torch.nn.functional.cosine_similarity(got[kind], value, dim=1)
        assert float(cosine.min()) >= 0.99, (kind, float(cosine.min()))


def test_ddp_with_one_process(digits: Path, tmp_path: Path) -> None:
    from dinotune.verbs.finetune import run_finetune

    out = tmp_path / "ddp"
    shutil.rmtree(out, ignore_errors=True)
    cfg = finetune_config(digits, out, trainer={**GPU, "max_epochs": 1, "strategy": "ddp"})
    result = _quiet(run_finetune, cfg)
    assert result.metrics["steps"] > 0
    _finite_best(result.metrics)
