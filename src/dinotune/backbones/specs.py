"""The DINOv3 architectures, described as data.

Everything else (building a random model, recognising a checkpoint, choosing normalisation) reads
this table, so a new release is one new entry. Names follow Meta's torch-hub names without the
`dinov3_` prefix; weights are a tag (`vitl16.sat493m`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT493M_MEAN = (0.430, 0.411, 0.296)
SAT493M_STD = (0.213, 0.156, 0.143)

DINOV3_LICENSE = "DINOv3 License (https://ai.meta.com/resources/models-and-libraries/dinov3-license/)"


@dataclass(frozen=True)
class ArchSpec:
    """Shape of one architecture; `hub_ids` maps a weights tag to its Hugging Face id."""

    name: str
    family: str  # "vit" or "convnext"
    embed_dim: int = 0  # ViT width; for ConvNeXt the last stage's width
    depth: int = 0
    num_heads: int = 0
    ffn: str = "mlp"  # "mlp" or "swiglu"
    intermediate_size: int = 0
    n_storage_tokens: int = 4
    patch_size: int = 16
    depths: tuple[int, ...] = ()
    dims: tuple[int, ...] = ()
    hub_ids: dict[str, str] = field(default_factory=dict)
    for_tests: bool = False


def _swiglu_hidden(dim: int, ratio: float, align: int = 8) -> int:
    """SwiGLU hidden width as the official code computes it (2/3 of ratio*dim, aligned)."""
    hidden = int(int(dim * ratio) * 2 / 3)
    return hidden + (-hidden % align)


def _hub(name: str, *tags: str) -> dict[str, str]:
    slug = name.replace("_", "-")
    return {tag: f"facebook/dinov3-{slug}-pretrain-{tag}" for tag in tags}


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in [
        ArchSpec("vits16", "vit", 384, 12, 6, "mlp", 1536, hub_ids=_hub("vits16", "lvd1689m")),
        ArchSpec(
            "vits16plus",
            "vit",
            384,
            12,
            6,
            "swiglu",
            _swiglu_hidden(384, 6),
            hub_ids=_hub("vits16plus", "lvd1689m"),
        ),
        ArchSpec("vitb16", "vit", 768, 12, 12, "mlp", 3072, hub_ids=_hub("vitb16", "lvd1689m")),
        ArchSpec("vitl16", "vit", 1024, 24, 16, "mlp", 4096, hub_ids=_hub("vitl16", "lvd1689m", "sat493m")),
        ArchSpec(
            "vith16plus",
            "vit",
            1280,
            32,
            20,
            "swiglu",
            _swiglu_hidden(1280, 6),
            hub_ids=_hub("vith16plus", "lvd1689m"),
        ),
        ArchSpec(
            "vit7b16",
            "vit",
            4096,
            40,
            32,
            "swiglu",
            _swiglu_hidden(4096, 3, align=64),
            hub_ids=_hub("vit7b16", "lvd1689m", "sat493m"),
        ),
        ArchSpec(
            "convnext_tiny",
            "convnext",
            768,
            depths=(3, 3, 9, 3),
            dims=(96, 192, 384, 768),
            n_storage_tokens=0,
            hub_ids=_hub("convnext_tiny", "lvd1689m"),
        ),
        ArchSpec(
            "convnext_small",
            "convnext",
            768,
            depths=(3, 3, 27, 3),
            dims=(96, 192, 384, 768),
            n_storage_tokens=0,
            hub_ids=_hub("convnext_small", "lvd1689m"),
        ),
        ArchSpec(
            "convnext_base",
            "convnext",
            1024,
            depths=(3, 3, 27, 3),
            dims=(128, 256, 512, 1024),
            n_storage_tokens=0,
            hub_ids=_hub("convnext_base", "lvd1689m"),
        ),
        ArchSpec(
            "convnext_large",
            "convnext",
            1536,
            depths=(3, 3, 27, 3),
            dims=(192, 384, 768, 1536),
            n_storage_tokens=0,
            hub_ids=_hub("convnext_large", "lvd1689m"),
        ),
        # Small sizes for tests, demos and CPU benchmarks; never released with weights.
        ArchSpec("vit_tiny16", "vit", 192, 6, 3, "mlp", 768, for_tests=True),
        ArchSpec("vit_test16", "vit", 64, 2, 2, "mlp", 256, for_tests=True),
        ArchSpec(
            "convnext_test",
            "convnext",
            128,
            depths=(1, 1, 2, 1),
            dims=(16, 32, 64, 128),
            n_storage_tokens=0,
            for_tests=True,
        ),
    ]
}


def get_arch(name: str) -> ArchSpec:
    """Look an architecture up by name, accepting Meta's `dinov3_` prefix."""
    from dinotune.errors import ConfigError

    key = name.removeprefix("dinov3_")
    if key not in ARCHS:
        import difflib

        close = difflib.get_close_matches(key, ARCHS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown architecture '{name}'.{hint} Known: {', '.join(ARCHS)}.")
    return ARCHS[key]


def norm_stats(weights_tag: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std that fit the weights: SAT-493M statistics for satellite weights, ImageNet otherwise."""
    if weights_tag and "sat493m" in weights_tag.lower():
        return SAT493M_MEAN, SAT493M_STD
    return IMAGENET_MEAN, IMAGENET_STD


def arch_from_hub_id(hub_id: str) -> tuple[ArchSpec, str] | None:
    """Map a released Hugging Face id back to (architecture, weights tag)."""
    for spec in ARCHS.values():
        for tag, known in spec.hub_ids.items():
            if known.lower() == hub_id.lower():
                return spec, tag
    return None
