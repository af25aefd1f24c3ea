"""Official DINOv3 `.pth` state_dicts <-> Hugging Face `DINOv3ViTModel` / `DINOv3ConvNextModel`.

Pure functions over state_dicts. One rename table per family serves both directions; the few
tensors that need more than a rename (the fused QKV projection, the masked K bias, the RoPE periods
buffer, the ConvNeXt final-norm alias) are handled next to it.

Keys dropped on purpose (all unused at inference; this is the one place that decides):
- `rope_embed.periods`: a buffer recomputed from `rope_theta`; checked to match before it is dropped.
- `blocks.N.attn.qkv.bias_mask`: zeroes the K part of the QKV bias; checked to have that pattern,
  and the K bias it masks is dropped with it (Hugging Face models have no K bias).
- `local_cls_norm.*`: the class-token norm used for local crops during training (ViT-7B, SAT ViT-L).
- `norms.3.*` (ConvNeXt): the same module as `norm.*`, saved twice by the official code.
The dropped tensors are returned so `dinotune convert` can keep them beside a Hugging Face folder and
a round trip gives identical tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dinotune.errors import CheckpointError

# (official pattern, Hugging Face pattern); {i}/{j} are indices, {p} is weight/bias.
VIT_RENAMES: list[tuple[str, str]] = [
    ("cls_token", "embeddings.cls_token"),
    ("storage_tokens", "embeddings.register_tokens"),
    ("patch_embed.proj.{p}", "embeddings.patch_embeddings.{p}"),
    ("blocks.{i}.norm1.{p}", "model.layer.{i}.norm1.{p}"),
    ("blocks.{i}.norm2.{p}", "model.layer.{i}.norm2.{p}"),
    ("blocks.{i}.attn.proj.{p}", "model.layer.{i}.attention.o_proj.{p}"),
    ("blocks.{i}.ls1.gamma", "model.layer.{i}.layer_scale1.lambda1"),
    ("blocks.{i}.ls2.gamma", "model.layer.{i}.layer_scale2.lambda1"),
    ("norm.{p}", "norm.{p}"),
]
VIT_MLP_RENAMES: list[tuple[str, str]] = [
    ("blocks.{i}.mlp.fc1.{p}", "model.layer.{i}.mlp.up_proj.{p}"),
    ("blocks.{i}.mlp.fc2.{p}", "model.layer.{i}.mlp.down_proj.{p}"),
]
VIT_SWIGLU_RENAMES: list[tuple[str, str]] = [
    ("blocks.{i}.mlp.w1.{p}", "model.layer.{i}.mlp.gate_proj.{p}"),
    ("blocks.{i}.mlp.w2.{p}", "model.layer.{i}.mlp.up_proj.{p}"),
    ("blocks.{i}.mlp.w3.{p}", "model.layer.{i}.mlp.down_proj.{p}"),
]

CONVNEXT_RENAMES: list[tuple[str, str]] = [
    ("downsample_layers.{i}.{j}.{p}", "model.stages.{i}.downsample_layers.{j}.{p}"),
    ("stages.{i}.{j}.gamma", "model.stages.{i}.layers.{j}.gamma"),
    ("stages.{i}.{j}.dwconv.{p}", "model.stages.{i}.layers.{j}.depthwise_conv.{p}"),
    ("stages.{i}.{j}.norm.{p}", "model.stages.{i}.layers.{j}.layer_norm.{p}"),
    ("stages.{i}.{j}.pwconv1.{p}", "model.stages.{i}.layers.{j}.pointwise_conv1.{p}"),
    ("stages.{i}.{j}.pwconv2.{p}", "model.stages.{i}.layers.{j}.pointwise_conv2.{p}"),
    ("norm.{p}", "layer_norm.{p}"),
]

_DROPPED_PATTERNS = [
    r"rope_embed\.periods",
    r"blocks\.\d+\.attn\.qkv\.bias_mask",
    r"local_cls_norm\..+",
    r"norms\.3\..+",
]
_WRAPPER_KEYS = ("teacher", "model", "state_dict", "student")
_PREFIXES = ("backbone.", "module.", "_orig_mod.")
_SEGMENTOR = "segmentation_model."


def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern)
    regex = regex.replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    regex = regex.replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{regex}$")


def _rename(key: str, table: list[tuple[str, str]], reverse: bool = False) -> str | None:
    for official, hf in table:
        source, target = (hf, official) if reverse else (official, hf)
        match = _compile(source).match(key)
        if match:
            return target.format(**match.groupdict())
    return None


@dataclass
class OfficialArch:
    """What a state_dict says about its network: enough to build the Hugging Face config."""

    family: str
    hf_config: dict[str, Any]

    @property
    def renames(self) -> list[tuple[str, str]]:
        if self.family == "convnext":
            return CONVNEXT_RENAMES
        return VIT_RENAMES + (VIT_SWIGLU_RENAMES if self.hf_config["use_gated_mlp"] else VIT_MLP_RENAMES)

    @property
    def embed_dim(self) -> int:
        return self.hf_config["hidden_size"] if self.family == "vit" else self.hf_config["hidden_sizes"][-1]


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """Accept a plain state_dict or a training checkpoint ({'teacher': ...}, 'backbone.' prefixes)."""
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} is not a state_dict of tensors. Pass an official DINOv3 release `.pth`.")
    out = {}
    for key, value in obj.items():
        if key.startswith(_SEGMENTOR):  # an official segmentor checkpoint (e.g. Mask2Former): its ViT only
            if not key.startswith(_SEGMENTOR + "0.backbone."):
                continue
            key = key.removeprefix(_SEGMENTOR + "0.backbone.")
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith(("dino_head.", "ibot_head.", "head.")):
            continue  # training heads, not part of the backbone
        out[key] = value
    return out


def _count(sd: dict[str, Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def infer_official_arch(sd: dict[str, Tensor], source: str = "checkpoint") -> OfficialArch:
    """Read width, depth, heads, FFN type, registers (ViT) or stage depths/dims (ConvNeXt) from keys."""
    if "blocks.0.attn.qkv.weight" in sd:
        return _infer_vit(sd)
    if "downsample_layers.0.0.weight" in sd:
        return _infer_convnext(sd)
    sample = ", ".join(list(sd)[:5])
    raise CheckpointError(
        f"{source} does not look like a DINOv3 ViT or ConvNeXt state_dict (first keys: {sample}). "
        "Expected keys such as 'blocks.0.attn.qkv.weight' or 'downsample_layers.0.0.weight'."
    )


def _infer_vit(sd: dict[str, Tensor]) -> OfficialArch:
    dim = sd["blocks.0.attn.qkv.weight"].shape[1]
    patch = sd.get("patch_embed.proj.weight")
    swiglu = "blocks.0.mlp.w1.weight" in sd
    hidden_key = "blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"
    periods = sd.get("rope_embed.periods")
    if periods is not None:
        head_dim = 4 * periods.numel()
        # periods[k] = theta ** (4k / head_dim), so the second period gives theta.
        theta = float(periods[1].double() ** (head_dim / 4)) if periods.numel() > 1 else 100.0
    else:
        head_dim, theta = (128 if dim == 4096 else 64), 100.0
    has_qkv_bias = "blocks.0.attn.qkv.bias" in sd
    key_masked = "blocks.0.attn.qkv.bias_mask" in sd
    config = {
        "hidden_size": dim,
        "num_hidden_layers": _count(sd, r"^blocks\.(\d+)\."),
        "num_attention_heads": dim // head_dim,
        "intermediate_size": sd[hidden_key].shape[0] if hidden_key in sd else 4 * dim,
        "use_gated_mlp": swiglu,
        "hidden_act": "silu" if swiglu else "gelu",
        "patch_size": patch.shape[-1] if patch is not None else 16,
        "num_channels": patch.shape[1] if patch is not None else 3,
        "num_register_tokens": sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0,
        "rope_theta": round(theta, 4),
        "layer_norm_eps": 1e-5,
        "query_bias": has_qkv_bias,
        "key_bias": has_qkv_bias and not key_masked,
        "value_bias": has_qkv_bias,
        "proj_bias": "blocks.0.attn.proj.bias" in sd,
        "mlp_bias": any(k.startswith("blocks.0.mlp.") and k.endswith(".bias") for k in sd),
        "layerscale_value": 1.0,
    }
    return OfficialArch("vit", config)


def _infer_convnext(sd: dict[str, Tensor]) -> OfficialArch:
    n_stages = _count(sd, r"^downsample_layers\.(\d+)\.")
    depths = [_count(sd, rf"^stages\.{s}\.(\d+)\.") for s in range(n_stages)]
    dims = [sd[f"downsample_layers.{s}.{0 if s == 0 else 1}.weight"].shape[0] for s in range(n_stages)]
    config = {
        "hidden_sizes": dims,
        "depths": depths,
        "num_channels": sd["downsample_layers.0.0.weight"].shape[1],
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
    }
    return OfficialArch("convnext", config)


def build_hf_model(arch: OfficialArch) -> torch.nn.Module:
    """An empty (randomly initialised) Hugging Face model with this architecture."""
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel, DINOv3ViTConfig, DINOv3ViTModel

    if arch.family == "vit":
        return DINOv3ViTModel(DINOv3ViTConfig(**arch.hf_config))
    return DINOv3ConvNextModel(DINOv3ConvNextConfig(**arch.hf_config))


def official_to_hf(sd: dict[str, Tensor], arch: OfficialArch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Return (Hugging Face state_dict, dropped tensors). Unknown keys raise, listing them all."""
    table = arch.renames
    hf: dict[str, Tensor] = {}
    dropped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    dim = arch.embed_dim
    for key, value in sd.items():
        if any(re.fullmatch(p, key) for p in _DROPPED_PATTERNS):
            dropped[key] = value
        elif key == "mask_token":
            hf["embeddings.mask_token"] = value.reshape(1, 1, -1)
        elif m := re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key):
            prefix = f"model.layer.{m.group(1)}.attention"
            q, k, v = value.split(dim, dim=0) if value.shape[0] == 3 * dim else (value, value, value)
            hf[f"{prefix}.q_proj.{m.group(2)}"] = q
            hf[f"{prefix}.v_proj.{m.group(2)}"] = v
            if m.group(2) == "weight" or arch.hf_config.get("key_bias"):
                hf[f"{prefix}.k_proj.{m.group(2)}"] = k
            else:
                dropped[key.replace(".bias", ".k_bias")] = k
        elif (new := _rename(key, table)) is not None:
            hf[new] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(
            f"Unexpected keys in the checkpoint ({len(unexpected)}): {_preview(unexpected)}. "
            "It is not an official DINOv3 backbone state_dict, or it has parts this version cannot load."
        )
    _check_dropped(dropped, arch)
    return hf, dropped


def _check_dropped(dropped: dict[str, Tensor], arch: OfficialArch) -> None:
    """Dropping is only safe when the dropped tensors are what inference would ignore anyway."""
    dim = arch.embed_dim
    periods = dropped.get("rope_embed.periods")
    if periods is not None:
        head_dim = 4 * periods.numel()
        theta = arch.hf_config["rope_theta"]
        expected = theta ** (4 * torch.arange(periods.numel(), dtype=torch.float64) / head_dim)
        if not torch.allclose(periods.double(), expected, rtol=1e-4):
            raise CheckpointError("rope_embed.periods does not follow theta**(4k/head_dim); cannot convert it.")
    expected_mask = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    for key, value in dropped.items():
        if key.endswith("bias_mask") and not torch.equal(value.float().cpu(), expected_mask):
            raise CheckpointError(f"{key} does not mask exactly the K bias; cannot convert it.")


def hf_to_official(
    hf: dict[str, Tensor], arch: OfficialArch, dropped: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Inverse of `official_to_hf`; tensors kept from the forward conversion are restored exactly."""
    dropped = dict(dropped or {})
    table = arch.renames
    sd: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in hf.items():
        if key == "embeddings.mask_token":
            sd["mask_token"] = value.reshape(1, -1)
        elif m := re.fullmatch(r"model\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        elif (new := _rename(key, table, reverse=True)) is not None:
            sd[new] = value
        else:
            raise CheckpointError(f"Unexpected Hugging Face key '{key}' for a DINOv3 {arch.family}.")
    for (block, kind), parts in sorted(qkv.items()):
        name = f"blocks.{block}.attn.qkv.{kind}"
        if "k" not in parts:
            parts["k"] = dropped.pop(name.replace(".bias", ".k_bias"), torch.zeros_like(parts["q"]))
            sd[f"blocks.{block}.attn.qkv.bias_mask"] = dropped.pop(
                f"blocks.{block}.attn.qkv.bias_mask",
                torch.cat([torch.ones_like(parts["q"]), torch.zeros_like(parts["q"]), torch.ones_like(parts["q"])]),
            )
        sd[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if arch.family == "vit":
        head_dim = arch.hf_config["hidden_size"] // arch.hf_config["num_attention_heads"]
        theta = arch.hf_config["rope_theta"]
        periods = theta ** (4 * torch.arange(head_dim // 4, dtype=torch.float32) / head_dim)
        sd["rope_embed.periods"] = dropped.pop("rope_embed.periods", periods)
    else:
        for p in ("weight", "bias"):
            sd[f"norms.3.{p}"] = dropped.pop(f"norms.3.{p}", sd[f"norm.{p}"].clone())
    sd.update(dropped)  # e.g. local_cls_norm.*
    return sd


def hf_config_to_arch(config: Any) -> OfficialArch:
    """The `OfficialArch` of a loaded Hugging Face config."""
    if config.model_type == "dinov3_vit":
        keys = [
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "use_gated_mlp",
            "hidden_act",
            "patch_size",
            "num_channels",
            "num_register_tokens",
            "rope_theta",
            "layer_norm_eps",
            "query_bias",
            "key_bias",
            "value_bias",
            "proj_bias",
            "mlp_bias",
            "layerscale_value",
        ]
        return OfficialArch("vit", {k: getattr(config, k) for k in keys})
    if config.model_type == "dinov3_convnext":
        keys = ["hidden_sizes", "depths", "num_channels", "layer_norm_eps", "hidden_act"]
        return OfficialArch("convnext", {k: getattr(config, k) for k in keys})
    raise CheckpointError(f"Model type '{config.model_type}' is not a DINOv3 ViT or ConvNeXt.")


def _preview(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_into(model: torch.nn.Module, hf_sd: dict[str, Tensor], source: str, arch: OfficialArch) -> None:
    """Strict load with messages in the checkpoint's own key names, never a bare torch shape error."""
    table = arch.renames
    expected = model.state_dict()

    def official_name(key: str) -> str:
        if m := re.fullmatch(r"model\.layer\.(\d+)\.attention\.[qkv]_proj\.(weight|bias)", key):
            return f"blocks.{m.group(1)}.attn.qkv.{m.group(2)}"
        if key == "embeddings.mask_token":
            return "mask_token"
        return _rename(key, table, reverse=True) or key

    missing = sorted({official_name(k) for k in expected if k not in hf_sd})
    unexpected = sorted({official_name(k) for k in hf_sd if k not in expected})
    wrong = [
        f"{official_name(k)} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in hf_sd.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {_preview(wrong)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the architecture: "
            + "; ".join(problems)
            + ". Is the file complete (not truncated) and is `arch` right?"
        )
    model.load_state_dict(hf_sd, strict=True)


#: tensors unused at inference, kept beside a converted folder so converting back is exact
DROPPED_FILE = "dinotune_dropped.safetensors"
