"""`dinotune convert SRC DST`: official `.pth` <-> Hugging Face folder, lossless both ways."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dinotune.atomic import atomic_dir, atomic_path
from dinotune.backbones.convert import (
    DROPPED_FILE,
    build_hf_model,
    hf_config_to_arch,
    hf_to_official,
    infer_official_arch,
    load_into,
    official_to_hf,
)
from dinotune.backbones.load import from_pretrained, read_state_dict
from dinotune.errors import CheckpointError


def convert_checkpoint(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """Official `.pth` -> Hugging Face folder, or Hugging Face folder -> official `.pth` (lossless).

    The folder is loadable by plain `transformers.AutoModel.from_pretrained`; tensors unused at
    inference are kept beside it in `dinotune_dropped.safetensors` so converting back is exact.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"Destination '{dst}' exists. Choose a new path or pass --overwrite.")
    if src.is_file():
        sd = read_state_dict(src)
        arch = infer_official_arch(sd, str(src))
        hf_sd, dropped = official_to_hf(sd, arch)
        model = build_hf_model(arch)
        load_into(model, hf_sd, str(src), arch)
        with atomic_dir(dst, overwrite=overwrite) as tmp:
            model.save_pretrained(tmp)
            if dropped:
                save_file({k: v.contiguous() for k, v in dropped.items()}, str(tmp / DROPPED_FILE))
        return dst
    if src.is_dir() and (src / "config.json").is_file():
        model = from_pretrained(str(src), local_files_only=True)
        arch = hf_config_to_arch(model.config)
        dropped = load_file(str(src / DROPPED_FILE)) if (src / DROPPED_FILE).is_file() else None
        sd = hf_to_official({k: v.detach().clone() for k, v in model.state_dict().items()}, arch, dropped)
        with atomic_path(dst) as tmp:
            torch.save(sd, tmp)
        return dst
    raise CheckpointError(f"'{src}' is neither an official .pth file nor a Hugging Face folder with config.json.")
