"""Shared training machinery: the Lightning `Trainer` factory and its config, and per-step schedules.
Used by continued pretraining (`tasks.ssl`) and fine-tuning (`tasks.classification`); optimizer
parameter groups live in `dinotune.optim`."""

from dinotune.training.trainer import TrainerConfig, build_trainer, resume_path

__all__ = ["TrainerConfig", "build_trainer", "resume_path"]
