"""Continued pretraining: EMA, schedules, parameter groups, multi-crop, and tiny end-to-end runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from dinotune.backbones import load_backbone
from dinotune.config import load_config, validate
from dinotune.data.multicrop import MultiCrop, MultiCropConfig, block_mask
from dinotune.errors import ConfigError
from dinotune.tasks.ssl import HeadsConfig, SSLLossConfig, SSLModule, SSLOptimConfig
from dinotune.training.optim import param_groups
from dinotune.training.schedules import cosine, warmup_cosine
from dinotune.training.trainer import AtomicCheckpointIO, TrainerConfig, _loggers, resolve_precision
from dinotune.verbs.pretrain import PretrainConfig, run_pretrain

REPO = Path(__file__).resolve().parents[2]
TINY_HEADS = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}


def _module(**loss) -> SSLModule:
    backbone = load_backbone("random:vit_test16", device="cpu")
    return SSLModule(backbone, HeadsConfig(**TINY_HEADS), SSLLossConfig(**loss), SSLOptimConfig(head_warmup=0.5))


def test_ema_update():
    module = _module()
    teacher_before = [p.clone() for p in module.teacher.parameters()]
    with torch.no_grad():
        for p in module.student.parameters():
            p.add_(1.0)
    module.update_teacher(0.9)
    for t0, t, s in zip(teacher_before, module.teacher.parameters(), module.student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=1e-6)
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_schedules():
    assert cosine(0, 100, 0.994, 1.0) == pytest.approx(0.994)
    assert cosine(50, 100, 0.994, 1.0) == pytest.approx(0.997)
    assert cosine(100, 100, 0.994, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(0, 100, 10, 1e-3, 1e-6) == 0.0
    assert warmup_cosine(5, 100, 10, 1e-3, 1e-6) == pytest.approx(5e-4)
    assert warmup_cosine(10, 100, 10, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert warmup_cosine(100, 100, 10, 1e-3, 1e-6) == pytest.approx(1e-6)
    module = _module()
    module.total_steps = 10
    values = module.scheduled(0)
    assert values["momentum"] == pytest.approx(0.994) and values["weight_decay"] == pytest.approx(0.04)
    assert module.scheduled(10)["momentum"] == pytest.approx(1.0)


def test_layer_decay_scales_as_ssl_uses_them():
    """SSL builds its groups with unit rates, so lr / weight_decay are the scales it multiplies by."""
    backbone = load_backbone("random:vit_test16", device="cpu")  # 2 blocks
    head = nn.Linear(4, 4)
    groups = param_groups(backbone, [head], lr=1.0, head_lr=1.0, layer_decay=0.5, weight_decay=1.0)
    by_name = {name: g for g in groups for name in g["param_names"]}
    assert by_name["hf.embeddings.patch_embeddings.weight"]["lr"] == pytest.approx(0.125)
    assert by_name["hf.model.layer.0.mlp.up_proj.weight"]["lr"] == pytest.approx(0.25)
    assert by_name["hf.model.layer.1.mlp.up_proj.weight"]["lr"] == pytest.approx(0.5)
    assert by_name["hf.norm.weight"]["lr"] == pytest.approx(1.0)
    assert by_name["weight"]["lr"] == pytest.approx(1.0)  # the head
    assert by_name["hf.model.layer.1.mlp.up_proj.weight"]["weight_decay"] == 1.0
    for no_decay in ("hf.model.layer.1.mlp.up_proj.bias", "hf.embeddings.cls_token", "hf.norm.weight", "bias"):
        assert by_name[no_decay]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(backbone.parameters())) + 2


def test_frozen_parts_lose_their_gradients():
    module = _module()
    module.total_steps, module.steps_per_epoch = 10, 4  # step 0: prototypes and backbone (head warm-up) frozen
    for p in module.student.parameters():
        p.grad = torch.ones_like(p)
    module.on_before_optimizer_step(None)
    assert module.student["dino_head"].prototypes.grad is None
    assert all(p.grad is None for p in module.student["backbone"].parameters())
    assert module.student["dino_head"].mlp[0].weight.grad is not None


def test_block_mask_counts():
    rng = np.random.default_rng(0)
    for n in range(0, 37):
        assert block_mask((6, 6), n, rng).sum() == n


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_multicrop_shapes_and_band_safety(channels):
    cfg = MultiCropConfig(
        global_size=32,
        local_size=16,
        n_local=3,
        colour_jitter_p=1.0,
        solarize_p=1.0,
        blur_p=(0.0, 0.0, 0.0),
        hflip=False,
    )
    crops = MultiCrop(cfg, channels, [0.0] * channels, [1.0] * channels)
    image = np.full((40, 40, channels), 0.3, dtype=np.float32)
    image[..., 0] = np.linspace(0, 1, 40, dtype=np.float32)[None, :]
    out = crops(image, np.random.default_rng(0))
    assert out["global"].shape == (2, channels, 32, 32) and out["local"].shape == (3, channels, 16, 16)
    again = crops(image, np.random.default_rng(0))
    assert torch.equal(out["global"], again["global"])  # a pure function of the generator
    if channels == 5:  # colour ops touch the 3 colour bands only
        assert torch.allclose(out["global"][:, 3:], torch.tensor(0.3))
        assert not torch.allclose(out["global"][1, 1], torch.tensor(0.3))  # solarised/jittered


def test_trainer_config():
    cfg = TrainerConfig(max_steps=3)
    assert resolve_precision(cfg) == ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    with pytest.raises(ValueError):
        TrainerConfig()  # neither max_epochs nor max_steps


def test_missing_logger_package_is_a_config_error(tmp_path):
    pytest.importorskip("lightning")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=r"dinotune\[tensorboard\]"):
        _loggers(["csv", "tensorboard"], tmp_path)


def test_atomic_checkpoint_io(tmp_path):
    path = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"a": torch.ones(2)}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_config_file_validates(tmp_path):
    cfg = load_config(PretrainConfig, REPO / "configs" / "ssl_continuation.yaml", [f"data.root={tmp_path}"])
    assert cfg.crops.global_scale == (0.4, 1.0) and cfg.crops.local_scale == (0.05, 0.4)
    assert cfg.crops.n_local == 8 and cfg.optim.momentum_start == 0.994 and cfg.optim.momentum_end == 1.0
    with pytest.raises(ConfigError, match="did you mean"):
        load_config(PretrainConfig, None, [f"data.root={tmp_path}", "loss.dino_wieght=1"])


# ----- end to end (tiny) ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """16 real digit images (train) + a 3-class labelled folder for the kNN monitor."""
    from dinotune.data.bundled import digits_imagefolder

    base = tmp_path_factory.mktemp("ssl")
    digits = digits_imagefolder(base / "digits", size=32)
    pool, labelled = base / "pool", base / "labelled"
    pool.mkdir()
    for i, path in enumerate(sorted(digits.glob("train/*/*.png"))[:16]):
        shutil.copy(path, pool / f"{i}.png")
    for cls in ("0", "1", "2"):
        files = sorted((digits / "train" / cls).glob("*.png"))
        for split, chosen in (("train", files[:4]), ("val", files[4:6])):
            (labelled / split / cls).mkdir(parents=True)
            for path in chosen:
                shutil.copy(path, labelled / split / cls / path.name)
    return base


def _cfg(images: Path, out: Path, steps: int, **extra) -> PretrainConfig:
    data = {
        "data": {"root": str(images / "pool"), "batch_size": 4, "num_workers": 0},
        "backbone": {"source": "random:vit_test16"},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 1},
        "heads": TINY_HEADS,
        "loss": {"gram_weight": 1.0, "mask_probability": 1.0},
        "optim": {"lr": 1e-3, "head_warmup": 0.0, "freeze_last_layer_epochs": 0.25},
        "trainer": {"max_steps": steps, "progress_bar": False, "log_every_n_steps": 1, "deterministic": True},
        "out": str(out),
    }
    data.update(extra)
    return validate(PretrainConfig, data)


def _teacher_student(ckpt: Path) -> tuple[dict, dict]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    pick = lambda prefix: {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
    return pick("teacher.backbone."), pick("student.backbone.")


def test_run_pretrain_exports_the_teacher_in_both_formats(images, tmp_path):
    monitor = {"val_root": str(images / "labelled"), "batch_size": 8}
    run = run_pretrain(_cfg(images, tmp_path / "run", 3, monitor=monitor)).run_dir
    for name in ("config.yaml", "backbone.pth", "backbone_hf/config.json", "checkpoints/last.ckpt", "metrics.json"):
        assert (run / name).exists(), name
    metrics = (next(run.glob("logs/version_*/metrics.csv"))).read_text().splitlines()[0]
    for key in ("loss/dino", "loss/ibot", "loss/koleo", "loss/gram", "monitor/agreement", "monitor/knn_top1"):
        assert key in metrics
    teacher_sd, student_sd = _teacher_student(run / "checkpoints" / "last.ckpt")
    reference = load_backbone("random:vit_test16", device="cpu")
    teacher = load_backbone("random:vit_test16", device="cpu")
    teacher.load_state_dict(teacher_sd)
    student = load_backbone("random:vit_test16", device="cpu")
    student.load_state_dict(student_sd)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = teacher.forward_features(x)["x_norm_patchtokens"]
        assert not torch.allclose(expected, student.forward_features(x)["x_norm_patchtokens"], atol=1e-6)
        assert not torch.allclose(expected, reference.forward_features(x)["x_norm_patchtokens"], atol=1e-6)
        for source in (run / "backbone_hf", run / "backbone.pth"):
            loaded = load_backbone(source, device="cpu")
            got = loaded.forward_features(x)
            assert torch.allclose(got["x_norm_patchtokens"], expected, atol=1e-5), source
            assert torch.allclose(got["x_norm_clstoken"], teacher.forward_features(x)["x_norm_clstoken"], atol=1e-5)


class _StopAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_resume_is_exact(images, tmp_path):
    """16 images / batch 4 = 4 steps per epoch: stopping after step 3 resumes in mid-epoch."""
    full = run_pretrain(_cfg(images, tmp_path / "full", 5, loss={"gram_weight": 1.0, "centering": "center"})).run_dir
    split_cfg = _cfg(images, tmp_path / "split", 5, loss={"gram_weight": 1.0, "centering": "center"})
    run_pretrain(split_cfg, callbacks=[_StopAt(3)])
    assert torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=False)["global_step"] == 3
    with pytest.raises(ConfigError, match="--resume"):  # an existing run is never trained over silently
        run_pretrain(split_cfg)
    split = run_pretrain(split_cfg, resume=True).run_dir
    a = torch.load(full / "checkpoints/last.ckpt", weights_only=False)
    b = torch.load(split / "checkpoints/last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 5
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # EMA teacher, centres and all
    assert a["state_dict"]["dino_loss.center"].abs().sum() > 0
