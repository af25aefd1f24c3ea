"""`load_backbone`: one entry point for every way a user holds DINOv3 weights.

Sources: a Hugging Face id (gated; must be cached or reachable), a local Hugging Face folder, an
official release `.pth` (architecture inferred from its keys), or `random:<arch>` for tests and demos.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinotune.backbones import convert
from dinotune.backbones.base import BackboneBase
from dinotune.backbones.channels import adapt_stats, adapt_stem_weight
from dinotune.backbones.convnext import ConvNeXtBackbone
from dinotune.backbones.info import BackboneInfo
from dinotune.backbones.specs import ARCHS, DINOV3_LICENSE, ArchSpec, arch_from_hub_id, get_arch, norm_stats
from dinotune.backbones.vit import ViTBackbone
from dinotune.device import resolve_device
from dinotune.errors import BackboneNotFoundError, CheckpointError

Backbone = BackboneBase
log = logging.getLogger(__name__)
_CHECKPOINT_SUFFIXES = {".pth", ".pt", ".bin", ".safetensors"}


def load_backbone(
    source: str | os.PathLike,
    *,
    arch: str | None = None,
    in_chans: int = 3,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Backbone:
    """Load a DINOv3 backbone in eval mode on `device` (CUDA when available, else CPU).

    `arch` is only needed to check a `.pth` against an expected architecture; `in_chans` != 3 adapts
    the stem for grayscale or multi-band input (see `dinotune.backbones.channels`); `seed` only
    matters for `random:` sources.
    """
    text = str(source)
    if text.startswith("random:"):
        backbone = _load_random(text.removeprefix("random:"), seed)
    else:
        path = Path(text).expanduser()
        if path.is_file():
            backbone = _load_official_file(path, arch)
        elif path.is_dir():
            backbone = _load_hf_folder(path, text)
        elif path.suffix in _CHECKPOINT_SUFFIXES or text.startswith((".", "/", "~")) or os.sep + os.sep in text:
            raise CheckpointError(f"Checkpoint '{text}' does not exist. Check the path.")
        else:
            backbone = _load_hub(text)
    if in_chans != backbone.info.in_chans:
        _adapt_channels(backbone, in_chans)
    return backbone.to(resolve_device(device)).eval()


def _wrap(hf_model: nn.Module, info: BackboneInfo) -> Backbone:
    if info.family == "vit":
        return ViTBackbone(hf_model, info)
    return ConvNeXtBackbone(hf_model, info)


def _make_info(
    arch_name: str, family: str, source: str, weights: str | None, in_chans: int, identity: str, random: bool = False
) -> BackboneInfo:
    mean, std = norm_stats(weights)
    return BackboneInfo(
        arch=arch_name,
        family=family,
        source=source,
        weights=weights,
        in_chans=in_chans,
        mean=adapt_stats(mean, in_chans),
        std=adapt_stats(std, in_chans),
        license="none (random weights)" if random else DINOV3_LICENSE,
        identity=hashlib.sha256(identity.encode()).hexdigest()[:16],
    )


def spec_to_arch(spec: ArchSpec) -> convert.OfficialArch:
    """The Hugging Face configuration of a named architecture (as released: masked K bias, RoPE 100)."""
    if spec.family == "convnext":
        return convert.OfficialArch(
            "convnext",
            {
                "hidden_sizes": list(spec.dims),
                "depths": list(spec.depths),
                "num_channels": 3,
                "layer_norm_eps": 1e-6,
                "hidden_act": "gelu",
            },
        )
    return convert.OfficialArch(
        "vit",
        {
            "hidden_size": spec.embed_dim,
            "num_hidden_layers": spec.depth,
            "num_attention_heads": spec.num_heads,
            "intermediate_size": spec.intermediate_size,
            "use_gated_mlp": spec.ffn == "swiglu",
            "hidden_act": "silu" if spec.ffn == "swiglu" else "gelu",
            "patch_size": spec.patch_size,
            "num_channels": 3,
            "num_register_tokens": spec.n_storage_tokens,
            "rope_theta": 100.0,
            "layer_norm_eps": 1e-5,
            "query_bias": True,
            "key_bias": False,
            "value_bias": True,
            "proj_bias": True,
            "mlp_bias": True,
            "layerscale_value": 1.0,
        },
    )


def match_spec(arch: convert.OfficialArch) -> str:
    """Name of the released (or test) architecture with this shape, or 'custom'."""
    for spec in ARCHS.values():
        known = spec_to_arch(spec).hf_config
        keys = (
            ("hidden_sizes", "depths")
            if arch.family == "convnext"
            else ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "use_gated_mlp")
        )
        if spec.family == arch.family and all(known[k] == arch.hf_config[k] for k in keys):
            return spec.name
    return "custom"


def _load_random(name: str, seed: int) -> Backbone:
    spec = get_arch(name)
    warnings.warn(
        f"RANDOM WEIGHTS: backbone 'random:{spec.name}' has no pretrained weights. Its features only prove "
        "that the pipeline runs; pass a Hugging Face id, a folder or an official .pth for real results.",
        stacklevel=3,
    )
    arch = spec_to_arch(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = convert.build_hf_model(arch)
    info = _make_info(spec.name, spec.family, f"random:{spec.name}", None, 3, f"random:{spec.name}:{seed}", random=True)
    return _wrap(hf_model, info)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely (no pickle code execution) with a clear error when it is broken."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path))
        else:
            try:
                raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a torn or foreign file
        raise CheckpointError(
            f"Cannot read checkpoint '{path}': {type(err).__name__}: {str(err).splitlines()[0][:200]}. "
            "The file may be truncated (re-download it) or not a PyTorch state_dict."
        ) from None
    return convert.unwrap_state_dict(raw, str(path))


def _load_official_file(path: Path, arch_name: str | None) -> Backbone:
    sd = read_state_dict(path)
    arch = convert.infer_official_arch(sd, str(path))
    if arch_name is not None:
        _check_expected_arch(arch, get_arch(arch_name), path)
    hf_sd, dropped = convert.official_to_hf(sd, arch)
    hf_model = convert.build_hf_model(arch)
    convert.load_into(hf_model, hf_sd, str(path), arch)
    stat = path.stat()
    name = (arch_name and get_arch(arch_name).name) or match_spec(arch)
    weights = "sat493m" if "sat493m" in path.name.lower() else ("lvd1689m" if "lvd1689m" in path.name else None)
    info = _make_info(
        name,
        arch.family,
        str(path),
        weights,
        arch.hf_config["num_channels"],
        f"pth:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}",
    )
    if dropped:
        log.info("Dropped %d tensors unused at inference from %s", len(dropped), path)
    return _wrap(hf_model, info)


def _check_expected_arch(found: convert.OfficialArch, spec: ArchSpec, path: Path) -> None:
    expected = spec_to_arch(spec)
    if found.family != expected.family:
        raise CheckpointError(f"'{path}' holds a {found.family}, but arch='{spec.name}' is a {expected.family}.")
    keys = (
        ["hidden_sizes", "depths"]
        if found.family == "convnext"
        else ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "use_gated_mlp"]
    )
    diffs = [
        f"{k}: checkpoint {found.hf_config[k]} vs {spec.name} {expected.hf_config[k]}"
        for k in keys
        if found.hf_config[k] != expected.hf_config[k]
    ]
    if diffs:
        raise CheckpointError(
            f"'{path}' does not match arch='{spec.name}' ({'; '.join(diffs)}). Omit `arch` to load it as it is, "
            "or check that the file is complete."
        )


def _load_hf_folder(path: Path, source: str) -> Backbone:
    if not (path / "config.json").is_file():
        pth = sorted(p.name for p in path.glob("*.pth"))
        hint = f" It contains {pth[0]}: pass that file instead." if pth else ""
        raise CheckpointError(f"Folder '{path}' has no config.json, so it is not a Hugging Face model folder.{hint}")
    hf_model = from_pretrained(str(path), local_files_only=True)
    identity = (path / "config.json").read_text() + "".join(
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.glob("*.safetensors"))
    )
    return _wrap_pretrained(hf_model, source, identity, path.name)


def _wrap_pretrained(hf_model: nn.Module, source: str, identity: str, name_hint: str) -> Backbone:
    arch = convert.hf_config_to_arch(hf_model.config)
    known = arch_from_hub_id(source)
    weights = known[1] if known else ("sat493m" if "sat493m" in name_hint.lower() else None)
    info = _make_info(match_spec(arch), arch.family, source, weights, arch.hf_config["num_channels"], identity)
    return _wrap(hf_model, info)


def from_pretrained(source: str, local_files_only: bool) -> nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source, local_files_only=local_files_only)
    if model.config.model_type not in ("dinov3_vit", "dinov3_convnext"):
        raise CheckpointError(f"'{source}' is a '{model.config.model_type}' model, not a DINOv3 backbone.")
    return model


def _cached_snapshot(hub_id: str) -> str | None:
    """The local snapshot folder of a cached hub model, found without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(hub_id, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError, or an invalid repo id: not cached either way
        return None
    return folder if (Path(folder) / "config.json").is_file() else None


def _load_hub(hub_id: str) -> Backbone:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    snapshot = _cached_snapshot(hub_id)
    if snapshot:
        # a local folder: transformers makes no hub requests for it (a hub id would, even with local_files_only)
        hf_model = from_pretrained(snapshot, local_files_only=True)
    elif offline:
        raise _hub_error(hub_id, "offline mode (HF_HUB_OFFLINE) and not in the local cache")
    else:
        unreachable = _hub_unreachable()
        if unreachable:  # fail in seconds rather than after the hub client's retries
            raise _hub_error(hub_id, f"not in the local cache and {unreachable}")
        try:
            hf_model = from_pretrained(hub_id, local_files_only=False)
        except OSError as err:
            raise _hub_error(hub_id, str(err).splitlines()[0][:160] or type(err).__name__) from None
    return _wrap_pretrained(hf_model, hub_id, f"hub:{hub_id}:{hf_model.config.to_json_string()}", hub_id)


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (DNS or TCP), or None when a connection opens."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as err:
        return f"{host} cannot be reached ({err})"
    return None


def _hub_error(hub_id: str, reason: str) -> BackboneNotFoundError:
    return BackboneNotFoundError(
        f"Cannot load '{hub_id}' from the Hugging Face hub ({reason}). DINOv3 weights are gated: accept the "
        f"license at https://huggingface.co/{hub_id}, then log in (`hf auth login` or HF_TOKEN) on a machine "
        "with internet; or pass a local Hugging Face folder or an official .pth file instead."
    )


def _adapt_channels(backbone: Backbone, in_chans: int) -> None:
    if in_chans < 1:
        raise CheckpointError(f"in_chans must be >= 1, got {in_chans}.")
    if isinstance(backbone, ViTBackbone):
        owner, attr = backbone.hf.embeddings, "patch_embeddings"
    else:
        owner, attr = backbone.hf.model.stages[0].downsample_layers, "0"
    old: nn.Conv2d = getattr(owner, attr) if attr != "0" else owner[0]
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(adapt_stem_weight(old.weight, in_chans))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    if attr == "0":
        owner[0] = new
    else:
        setattr(owner, attr, new)
    backbone.hf.config.num_channels = in_chans
    info = backbone.info
    object.__setattr__(info, "in_chans", in_chans)
    object.__setattr__(info, "mean", adapt_stats(info.mean, in_chans))
    object.__setattr__(info, "std", adapt_stats(info.std, in_chans))
    object.__setattr__(info, "identity", f"{info.identity}:in{in_chans}:cyclic")  # the stem rule is part of it
