"""How an image becomes the backbone's input: one record shared by the feature cache, training,
evaluation and serving, so the pixels a model sees never differ between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Preprocessing:
    """Part of the feature-cache key and of every saved model card.

    `resize` must give a fixed size (crop or pad) where images are batched.
    """

    image_size: int
    resize: str = "crop"
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    scaling: dict[str, Any] = field(default_factory=dict)

    def transform(self, patch_size: int, train: bool = False, augment: str = "none"):
        if self.resize == "letterbox" and not train:  # detection: longest side to image_size, padded bottom/right
            from dinotune.data.letterbox import LetterboxTensor

            return LetterboxTensor(self.image_size, self.mean, self.std, self.channels)
        from dinotune.data.transforms import build_transform

        return build_transform(
            train=train,
            image_size=self.image_size,
            patch_size=patch_size,
            resize=self.resize,
            augment=augment,
            mean=self.mean,
            std=self.std,
            channels=self.channels,
        )

    def scaling_config(self):
        """The 16-bit / multi-band scaling (None: the default divisor)."""
        from dinotune.data.config import ScalingConfig

        return ScalingConfig(**self.scaling) if self.scaling else None

    def load(self, path, patch_size: int):
        """Decode and transform one image file into a CHW tensor."""
        from dinotune.data.decode import read_image

        image = read_image(path, self.channels, self.scaling_config())
        return self.transform(patch_size)(image)["image"]
