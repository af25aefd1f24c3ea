"""Run `run_finetune` from a JSON config in a fresh process (for the SIGKILL and torchrun tests).

Usage: python train_script.py CONFIG_JSON [--kill-while-saving-step N]
With --kill-while-saving-step, the process SIGKILLs itself halfway through writing the checkpoint of
optimizer step N, as a power cut would.
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


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    cfg = validate(FinetuneConfig, json.loads(sys.argv[1]))
    callbacks = []
    if "--kill-while-saving-step" in sys.argv:
        callbacks.append(KillWhileSaving(int(sys.argv[sys.argv.index("--kill-while-saving-step") + 1])))
    run_finetune(cfg, resume="--resume" in sys.argv, callbacks=callbacks)


if __name__ == "__main__":
    main()
