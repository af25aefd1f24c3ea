"""The training spine every training verb shares: Trainer factory, task base module, modes, optimizer
groups and schedules, the resumable sampler and the best-model callback."""

from dinotune.training.trainer import TrainerConfig, build_trainer, resume_path

__all__ = ["TrainerConfig", "build_trainer", "resume_path"]
