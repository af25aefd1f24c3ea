"""What a loaded backbone is, beyond its weights: needed to preprocess inputs and to key caches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class BackboneInfo:
    arch: str  # a name from specs.ARCHS, or "custom" for an unrecognised shape
    family: str  # "vit" or "convnext"
    source: str  # what the user passed to load_backbone
    weights: str | None  # weights tag ("lvd1689m", "sat493m"), None when unknown or random
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    license: str
    identity: str  # changes whenever the weights may have changed; used by the feature cache
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
