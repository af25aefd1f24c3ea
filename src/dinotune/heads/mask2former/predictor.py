"""Mask2Former's transformer decoder: learned queries, masked cross-attention, class and mask heads.

Every layer lets the queries attend (cross-attention, then self-attention, then an FFN; post-norm) to
one of the pixel decoder's maps, cycling strides 32, 16, 8. The cross-attention is *masked*: a query
only sees the pixels its previous mask prediction covers (sigmoid >= 0.5), which is what makes the
decoder converge fast. After the learned queries and after every layer, the queries predict class
logits (`num_classes + 1`, the last meaning "no object") and mask logits at stride 4, the dot product
of a query embedding with the per-pixel mask features. Names follow the official
`MultiScaleMaskedTransformerDecoder`, so its weights load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotune.heads.mask2former.pixel_decoder import sine_position


def _xavier(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, n_heads)
        self.norm = nn.LayerNorm(dim)
        _xavier(self)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        q = k = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, k, value=tgt, need_weights=False)[0])


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, n_heads)
        self.norm = nn.LayerNorm(dim)
        _xavier(self)

    def forward(self, tgt: Tensor, memory: Tensor, mask: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        out = self.multihead_attn(tgt + query_pos, memory + pos, value=memory, attn_mask=mask, need_weights=False)[0]
        return self.norm(tgt + out)


class FFNLayer(nn.Module):
    def __init__(self, dim: int, ffn: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm = nn.LayerNorm(dim)
        _xavier(self)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """`n` linear layers with ReLU between them."""

    def __init__(self, dim: int, hidden: int, out: int, n: int) -> None:
        super().__init__()
        sizes = [dim] + [hidden] * (n - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, [hidden] * (n - 1) + [out], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskedTransformerDecoder(nn.Module):
    """Decoder maps [s32, s16, s8] + mask features (B, C, H/4, W/4) -> the Mask2Former output dict."""

    N_LEVELS = 3

    def __init__(
        self, hidden: int, num_classes: int, *, queries: int = 100, n_heads: int = 16, ffn: int = 4096, layers: int = 9
    ) -> None:
        super().__init__()
        self.n_heads, self.hidden = n_heads, hidden
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden, n_heads) for _ in range(layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden, n_heads) for _ in range(layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden, ffn) for _ in range(layers))
        self.post_norm = nn.LayerNorm(hidden)
        self.query_feat = nn.Embedding(queries, hidden)
        self.query_embed = nn.Embedding(queries, hidden)
        self.level_embed = nn.Embedding(self.N_LEVELS, hidden)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.mask_embed = MLP(hidden, hidden, hidden, 3)

    def heads(self, queries: Tensor, mask_features: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """queries (Q, B, C) -> class logits (B, Q, K+1), mask logits (B, Q, H, W), and the attention mask
        (B * heads, Q, h * w) of the next layer (True: not allowed)."""
        decoded = self.post_norm(queries).transpose(0, 1)
        logits = self.class_embed(decoded)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        small = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        forbid = small.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.n_heads, 1, 1).flatten(0, 1) < 0.5
        forbid = forbid & ~forbid.all(-1, keepdim=True)  # a query that covers nothing may look everywhere
        return logits, masks, forbid.detach()

    def forward(self, maps: list[Tensor], mask_features: Tensor) -> dict[str, object]:
        sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        pos = [sine_position(m, self.hidden // 2).flatten(2).permute(2, 0, 1) for m in maps]
        src = [(m.flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1) for i, m in enumerate(maps)]
        b = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        out = self.query_feat.weight.unsqueeze(1).repeat(1, b, 1)
        logits, masks, forbid = self.heads(out, mask_features, sizes[0])
        predictions = [(logits, masks)]
        for i, (cross, self_attn, ffn) in enumerate(
            zip(
                self.transformer_cross_attention_layers,
                self.transformer_self_attention_layers,
                self.transformer_ffn_layers,
                strict=True,
            )
        ):
            level = i % self.N_LEVELS
            out = cross(out, src[level], forbid, pos[level], query_pos)
            out = ffn(self_attn(out, query_pos))
            logits, masks, forbid = self.heads(out, mask_features, sizes[(i + 1) % self.N_LEVELS])
            predictions.append((logits, masks))
        return {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]],
        }


__all__ = ["MLP", "MaskedTransformerDecoder"]
