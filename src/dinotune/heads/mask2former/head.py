"""`Mask2FormerHead`: the DINOv3 adapter, the pixel decoder and the masked transformer decoder as one head.

Unlike the other segmentation heads it reads the image as well as the ViT maps (the adapter's
convolutional stem sees the pixels). Its raw output is Mask2Former's dict (`pred_logits` (B, Q, K+1),
`pred_masks` (B, Q, H/4, W/4), `aux_outputs`); `semantic` turns it into per-class scores the official
way: softmax over classes without "no object", times the sigmoid of each query's mask, summed over
queries. With class aggregation (an (N_user, K) 0/1 matrix) the probabilities of the head classes that
make up a user class are summed first, so the user sees N_user classes at training and inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotune.heads.mask2former.adapter import DINOv3Adapter
from dinotune.heads.mask2former.config import Mask2FormerConfig
from dinotune.heads.mask2former.pixel_decoder import PixelDecoder
from dinotune.heads.mask2former.predictor import MaskedTransformerDecoder

Outputs = dict[str, object]


def four_even_intervals(n_blocks: int) -> list[int]:
    """The official FOUR_EVEN_INTERVALS blocks (ViT-L: [4, 11, 17, 23] as in the paper); backbones with
    fewer than 4 blocks (tests) read their blocks in order, the last repeated."""
    if n_blocks < 4:
        return [min(i, n_blocks - 1) for i in range(4)]
    if n_blocks == 24:
        return [4, 11, 17, 23]
    return [i * (n_blocks // 4) - 1 for i in range(1, 5)]


class Mask2FormerHead(nn.Module):
    """(images, 4 ViT maps) -> Mask2Former outputs; `num_classes` is the user's class count."""

    def __init__(
        self,
        in_dim: int,
        head_classes: int,
        cfg: Mask2FormerConfig,
        in_chans: int = 3,
        aggregation: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.head_classes = cfg, head_classes
        self.adapter = DINOv3Adapter(in_dim, 4, conv_inplane=cfg.adapter_inplanes, n_heads=cfg.adapter_heads,
                                     drop_path=cfg.adapter_drop_path, in_chans=in_chans)  # fmt: skip
        self.pixel_decoder = PixelDecoder(in_dim, cfg.hidden_dim, enc_layers=cfg.enc_layers, ffn=cfg.ffn_dim,
                                          n_heads=cfg.heads)  # fmt: skip
        self.predictor = MaskedTransformerDecoder(
            cfg.hidden_dim,
            head_classes,
            queries=cfg.num_queries,
            n_heads=cfg.heads,
            ffn=cfg.ffn_dim,
            layers=cfg.dec_layers,
        )
        if aggregation is None:
            aggregation = torch.eye(head_classes)
        if aggregation.shape[1] != head_classes:
            raise ValueError(f"aggregation has {aggregation.shape[1]} columns for a head of {head_classes} classes")
        self.register_buffer("aggregation", aggregation.float(), persistent=False)  # not part of the weights
        self.num_classes = int(aggregation.shape[0])

    def train(self, mode: bool = True) -> Mask2FormerHead:
        """Parts with every parameter frozen stay in eval mode while the rest trains: their BatchNorm
        statistics and drop path stay those of inference, so frozen parts are bit-identical after training."""
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def forward(self, images: Tensor, feats: list[Tensor]) -> Outputs:
        maps = self.adapter(images, [f.float() for f in feats])
        mask_features, multi_scale = self.pixel_decoder(maps)
        return self.predictor(multi_scale, mask_features)

    def class_probs(self, logits: Tensor) -> Tensor:
        """(B, Q, K+1) logits -> (B, Q, N_user) probabilities of the user's classes ("no object" dropped)."""
        probs = logits.float().softmax(-1)[..., :-1]
        return probs @ self.aggregation.t()

    def semantic(self, outputs: Outputs, size: tuple[int, int]) -> Tensor:
        """Per-class scores (B, N_user, *size): masks resized bilinearly first, as the official `predict`."""
        masks = F.interpolate(outputs["pred_masks"], size=size, mode="bilinear", align_corners=False)  # type: ignore[arg-type]
        return torch.einsum("bqc,bqhw->bchw", self.class_probs(outputs["pred_logits"]), masks.float().sigmoid())  # type: ignore[arg-type]


__all__ = ["Mask2FormerHead", "four_even_intervals"]
