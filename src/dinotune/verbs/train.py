"""`dinotune train CONFIG`: the job a YAML config names in its `task` key, run by that task's verb."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dinotune.config import apply_overrides, load_config, read_yaml
from dinotune.errors import ConfigError
from dinotune.verbs.common import Result

TRAIN_TASKS = ("probe", "finetune", "segment", "pretrain", "depth", "detect")  # the YAML's `task` key


def train_job(task: str) -> tuple[Any, Any]:
    """(config model, verb) of a training task; imported here so `--help` does not load Lightning."""
    if task == "probe":
        from dinotune.verbs.probe import ProbeConfig, run_probe

        return ProbeConfig, run_probe
    if task == "finetune":
        from dinotune.verbs.finetune import FinetuneConfig, run_finetune

        return FinetuneConfig, run_finetune
    if task == "segment":
        from dinotune.verbs.segment import SegmentConfig, run_segment

        return SegmentConfig, run_segment
    if task == "depth":
        from dinotune.verbs.depth import DepthConfig, run_depth

        return DepthConfig, run_depth
    if task == "detect":
        from dinotune.verbs.detect import DetectConfig, run_detect

        return DetectConfig, run_detect
    from dinotune.verbs.pretrain import PretrainConfig, run_pretrain

    return PretrainConfig, run_pretrain


def run_train(config: Path, overrides: list[str] | None = None, resume: bool = False) -> Result:
    """Read `task` from the YAML (or a `task=` override), build that task's config and run its verb."""
    if config.is_dir():
        example = f"`dinotune train configs/finetune.yaml data.root={config}`"
        raise ConfigError(f"'{config}' is a folder; train takes a YAML config, e.g. {example}.")
    task = apply_overrides(read_yaml(config), [o for o in overrides or [] if o.startswith("task=")]).get("task")
    if task not in TRAIN_TASKS:
        raise ConfigError(f"'{config}': key 'task' must be one of {', '.join(TRAIN_TASKS)} (got {task!r}).")
    model, runner = train_job(task)
    cfg = load_config(model, config, overrides)
    if task != "probe":
        return runner(cfg, resume=resume)
    if resume:
        raise ConfigError("--resume is for training jobs; a probe re-run reuses its cached features anyway.")
    return runner(cfg)
