"""Run `run_finetune` from a JSON config in a fresh process (for the SIGKILL and torchrun tests).

Usage: python train_script.py CONFIG_JSON [--kill-while-saving-step N | --kill-after-step N |
                                            --kill-in-validation-epoch N]
The process SIGKILLs itself, as a power cut would: halfway through writing the checkpoint of optimizer
step N, right after step N (mid-epoch, between checkpoints), or during the validation of epoch N.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings

import lightning as L
import torch

from dinotune.config import validate
from dinotune.verbs.finetune import FinetuneConfig, run_finetune


class KillWhileSaving(L.Callback):
    """Arms a torch.save that writes a partial file and kills the process (runs before ModelCheckpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step != self.step:
            return
        real_save = torch.save

        def torn_save(obj: object, path: object, *a: object, **k: object) -> None:
            with open(path, "wb") as handle:  # type: ignore[arg-type]
                handle.write(b"PK\x03\x04 a torn checkpoint")
                handle.flush()
                os.fsync(handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, path, *a, **k)  # never reached

        torch.save = torn_save


class KillAt(L.Callback):
    """SIGKILL after training step `step`, or in the middle of the validation of epoch `val_epoch`."""

    def __init__(self, step: int | None = None, val_epoch: int | None = None) -> None:
        self.step, self.val_epoch = step, val_epoch

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.step is not None and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.val_epoch is not None and trainer.current_epoch == self.val_epoch and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)


def _flag(name: str) -> int | None:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else None


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    cfg = validate(FinetuneConfig, json.loads(sys.argv[1]))
    callbacks: list[L.Callback] = []
    if (step := _flag("--kill-while-saving-step")) is not None:
        callbacks.append(KillWhileSaving(step))
    callbacks.append(KillAt(_flag("--kill-after-step"), _flag("--kill-in-validation-epoch")))
    run_finetune(cfg, resume="--resume" in sys.argv, callbacks=callbacks)


if __name__ == "__main__":
    main()
