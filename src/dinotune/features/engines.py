"""The ways a frozen backbone's pooled features can be computed: eager PyTorch, ONNX Runtime, torch.compile.

Each engine maps a batch of images to the same `{kind: (B, D) fp32 CPU tensor}` as
`dinotune.features.extract.extract_features` (the eager reference). Which one runs is decided in
`dinotune.features.engine`; this module only builds them.

- `eager`: `compute_features` under inference mode; on CUDA with bf16 autocast and, for ConvNeXt,
  channels_last memory (convolutions run faster in NHWC).
- `onnxruntime` (CPU): the backbone exported once with `torch.onnx.export` (dynamic batch axis), rewritten
  by `dinotune.features.graph_passes` (LayerScale folded into the weights, the rotary embedding as one
  fused node) and kept on disk, named by a digest of the weights, the feature kinds, the input shape and
  `GRAPH_VERSION`, so a later run (or another verb) reuses it; ViT-S/16 runs ~1.4x faster than eager here.
- `compile`: `torch.compile` of the same function (worth it on CUDA; on CPU its compile takes minutes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from dinotune.atomic import atomic_path
from dinotune.backbones import Backbone
from dinotune.device import autocast
from dinotune.features.extract import compute_features, extract_features, feature_kinds
from dinotune.features.graph_passes import optimize_graph

log = logging.getLogger(__name__)
INPUT = "images"
GRAPH_VERSION = 3  # 2: LayerScale folded, fused rotary; 3: fused attention; bump when the graph changes
Engine = Callable[[Tensor], dict[str, Tensor]]


def backbone_device(backbone: Backbone) -> torch.device:
    return next(backbone.parameters()).device


def _is_convnet(backbone: Backbone) -> bool:
    return hasattr(backbone, "stages")  # ConvNeXt is built of stages, a ViT of blocks


class EagerEngine:
    """The reference: plain PyTorch (bf16 autocast and channels_last on CUDA)."""

    name = "eager"

    def __init__(self, backbone: Backbone, kinds: tuple[str, ...] | None = None) -> None:
        self.backbone, self.kinds = backbone, tuple(kinds or feature_kinds(backbone))
        self.device = backbone_device(backbone)
        self.channels_last = self.device.type == "cuda" and _is_convnet(backbone)
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        return extract_features(self.backbone, images, self.kinds, self.channels_last)


class CompiledEngine(EagerEngine):
    """`torch.compile` of the eager function, compiled on its first call (a smaller last batch recompiles once)."""

    name = "compile"

    def __init__(self, backbone: Backbone, kinds: tuple[str, ...] | None = None) -> None:
        super().__init__(backbone, kinds)
        self.compiled = torch.compile(lambda x: compute_features(self.backbone, x, self.kinds))

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device):
            out = self.compiled(images)
        return {k: v.float().cpu() for k, v in out.items()}


class _FeatureGraph(nn.Module):
    """What the exported graph computes: images -> one output per feature kind."""

    def __init__(self, backbone: Backbone, kinds: tuple[str, ...]) -> None:
        super().__init__()
        self.backbone, self.kinds = backbone, kinds

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = compute_features(self.backbone, images, self.kinds)
        return tuple(out[k] for k in self.kinds)


def weights_digest(backbone: Backbone) -> str:
    """SHA-256 over every parameter and buffer (names, shapes, bytes): the graph file's identity."""
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"|{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(memoryview(value.view(torch.uint8).numpy()) if value.numel() else b"")
    return digest.hexdigest()


def graph_path(
    folder: Path, backbone: Backbone, kinds: tuple[str, ...], shape: tuple[int, ...], rewrite: bool = True
) -> Path:
    """Where the exported graph of this backbone, these kinds and this (C, H, W) input lives."""
    version = GRAPH_VERSION if rewrite else "plain"
    key = hashlib.sha256(f"{weights_digest(backbone)}|{kinds}|{shape}|{torch.__version__}|{version}".encode())
    return Path(folder) / f"features-{key.hexdigest()[:20]}.onnx"


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs one warning per missing torchvision op (nothing here uses torchvision) and its
    graph optimiser hundreds of INFO lines; only errors are worth showing (used by export too)."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir", "torch.export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_graph(
    backbone: Backbone, kinds: tuple[str, ...], shape: tuple[int, ...], path: Path, rewrite: bool = True
) -> Path:
    """Export the features graph to `path` (atomically), with a dynamic batch axis; `rewrite`: apply the
    graph passes (`dinotune.features.graph_passes.optimize_graph`)."""
    import warnings

    from torch.export import Dim

    module = _FeatureGraph(backbone, kinds).eval()
    example = (torch.zeros(2, *shape),)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_exporter(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=[INPUT],
            output_names=list(kinds),
            dynamic_shapes=({0: Dim("batch", min=1, max=8192)},),
            verbose=False,
        )
        with atomic_path(path) as tmp:
            program.save(str(tmp))
            if rewrite:
                try:
                    log.debug("graph passes on %s: %s", path.name, optimize_graph(tmp))
                except Exception as err:  # a pass is an optimisation: the plain export still works
                    log.info("graph passes skipped (%s: %s); using the plain export", type(err).__name__, err)
                    program.save(str(tmp))
    return path


class OnnxEngine:
    """ONNX Runtime on the CPU over the exported features graph, with torch's thread count."""

    name = "onnxruntime"

    def __init__(
        self, backbone: Backbone, kinds: tuple[str, ...], shape: tuple[int, ...], folder: Path, rewrite: bool = True
    ) -> None:
        import onnxruntime as ort

        self.kinds = tuple(kinds)
        path = graph_path(folder, backbone, self.kinds, shape, rewrite)
        if not path.is_file():
            log.info("exporting the backbone to ONNX for faster extraction (once): %s", path)
            export_graph(backbone, self.kinds, shape, path, rewrite)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        values = self.session.run(list(self.kinds), {INPUT: array})
        return {k: torch.from_numpy(v) for k, v in zip(self.kinds, values, strict=True)}
