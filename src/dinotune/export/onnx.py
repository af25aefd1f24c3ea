"""ONNX export of a model folder that checks itself: ONNX Runtime against PyTorch, int8 against fp32.

Every task exports: a classifier gives `logits` and `embedding` (the normed class token, the drift
monitor's input), a segmenter gives `logits` at the input's resolution, a detector gives decoded `boxes` and
per-class `scores` before NMS for its fixed letterboxed size (export.detect), a backbone-only export gives
`embedding` and `patch_mean`. The graph comes from `torch.export` (the dynamo exporter), which traces
the RoPE table from symbolic input sizes, so one file serves any batch size and any height/width that
is a multiple of the patch size (a traced constant RoPE would be silently wrong at other sizes).
The export folder holds `model.onnx` (+ `model.int8.onnx`), a `model.json` card with the verification
figures under `metrics.export`, and `reference_stats.json` (embedding statistics on real images).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dinotune.atomic import write_text
from dinotune.data.decode import is_image_path
from dinotune.data.depth import is_depth_layout, load_depth_dataset
from dinotune.data.formats import load_dataset
from dinotune.errors import ConfigError, DataError
from dinotune.export.detect import detection_parity
from dinotune.export.quantize import group_by_shape, quantize_graph, run_session, timing, timing_batch
from dinotune.export.seal import seal_export
from dinotune.export.spec import input_spec
from dinotune.features.engines import quiet_exporter
from dinotune.features.extract import compute_features
from dinotune.heads.linear import build_input, parse_feature_choice
from dinotune.model import Classifier, ModelCard, Segmenter, load_model, onnx_session, read_card
from dinotune.model.depther import DepthModel
from dinotune.model.detector import Detector
from dinotune.model.onnx import INPUT_NAME
from dinotune.run_folder import recorded_data_root, staged_output

log = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REFERENCE_FILE = "reference_stats.json"
PARITY_GOAL = 1e-4  # max abs difference ONNX Runtime vs PyTorch, fp32


class ExportModule(nn.Module):
    """The graph an export holds: images -> the named outputs (see the module docstring)."""

    def __init__(self, model: Classifier | Segmenter | Detector, backbone_only: bool) -> None:
        super().__init__()
        self.model, self.backbone_only = model, backbone_only
        self.segment = isinstance(model, Segmenter) and not backbone_only
        self.detect = isinstance(model, Detector) and not backbone_only
        choice = model.head.feature_choice if isinstance(model, Classifier) and not backbone_only else "patch_mean"
        self.kinds = tuple(dict.fromkeys(("cls", *parse_feature_choice(choice))))

    @property
    def output_names(self) -> list[str]:
        if self.segment:
            return ["depth"] if isinstance(self.model, DepthModel) else ["logits"]
        if self.detect:
            return ["boxes", "scores"]
        return ["embedding", "patch_mean"] if self.backbone_only else ["logits", "embedding"]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        if self.segment:
            return (self.model(images),)
        if self.detect:
            return self.model.decoded(images)
        features = compute_features(self.model.backbone, images, self.kinds)
        if self.backbone_only:
            return features["cls"], features["patch_mean"]
        return self.model.head(build_input(features, self.model.head.feature_choice)), features["cls"]


def export_model(
    source: str | Path,
    out: str | Path,
    *,
    fmt: Literal["onnx"] = "onnx",
    quantize: Literal["int8"] | None = None,
    static: bool = False,
    opset: int | None = None,
    backbone_only: bool = False,
    calibration_images: str | Path | Sequence[str | Path] | None = None,
    overwrite: bool = False,
    max_images: int = 64,
    dynamic_spatial: bool = True,
    timing_repeats: int = 5,
) -> dict[str, Any]:
    """Export the model folder `source` to the folder `out` and return the verification report.

    `calibration_images` (a folder or a list of files; default: the run's validation split when its
    splits.json still points at the data) are used for parity, int8 agreement, static calibration
    (`static=True`) and the drift reference; without them only random inputs are checked.
    """
    if fmt != "onnx":
        raise ConfigError(f"export format '{fmt}' is not supported; use --format onnx.")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize} is not supported; use --quantize int8 or leave it out.")
    source, out = Path(source), Path(out)
    if read_card(source).is_onnx:
        raise ConfigError(f"'{source}' is already an ONNX export; export the run or model folder it came from.")
    model, card = load_model(source, device="cpu")
    if card.head.get("type") == "m2f" and dynamic_spatial:  # its adapter's grid sizes trace as constants
        log.warning("Mask2Former head: exporting for one input size (%d px); predict with inference.mode=slide.",
                    card.preprocessing.image_size)  # fmt: skip
        dynamic_spatial = False
    module = ExportModule(model, backbone_only).eval()
    paths = _image_paths(calibration_images, source, max_images)
    images = [card.preprocessing.load(p, model.input_multiple) for p in paths]
    if static and quantize and not images:
        raise ConfigError("static int8 quantisation needs calibration images (--calibration-images FOLDER).")
    with staged_output(out, overwrite=overwrite, keep=[source]) as tmp:
        report, cases, batch = _export_into(tmp, module, card, images, paths, model.input_multiple, opset,
                                            dynamic_spatial and not module.detect, timing_repeats)  # fmt: skip
        if quantize:
            report["int8"] = quantize_graph(
                tmp / FP32_FILE,
                tmp / INT8_FILE,
                onnx_session(tmp / FP32_FILE),
                cases,
                images if static else None,
                batch,
                timing_repeats,
                backbone_only,
            )
        served = INT8_FILE if report.get("int8", {}).get("kept") else FP32_FILE
        report["served"] = served
        export_card = _export_card(card, module, served, model.input_multiple, report, backbone_only)
        export_card.name = card.name or source.resolve().name  # served under its run's name wherever it is mounted
        seal_export(tmp, export_card)
    _log_report(out, report)
    return {"folder": str(out), **report}


def _export_into(
    tmp: Path,
    module: ExportModule,
    card: ModelCard,
    images: list[Tensor],
    paths: list[Path],
    multiple: int,
    opset: int | None,
    dynamic_spatial: bool,
    repeats: int,
) -> tuple[dict[str, Any], dict[str, Tensor], Tensor]:
    """Write model.onnx (+ reference stats) into `tmp`: its report, parity inputs and timing batch."""
    size, channels = card.preprocessing.image_size, card.preprocessing.channels
    dynamic = _export_onnx(module, tmp / FP32_FILE, channels, size, multiple, opset, dynamic_spatial)
    fp32 = onnx_session(tmp / FP32_FILE)
    report: dict[str, Any] = {
        "format": "onnx",
        "file": FP32_FILE,
        "opset": _opset(tmp / FP32_FILE),
        "dynamic_axes": dynamic,
        "outputs": module.output_names,
        "torch": torch.__version__,
    }
    cases = _parity_inputs(images, channels, size, multiple, "height" in dynamic)
    report["parity"] = _parity(module, fp32, cases)
    report["other_sizes"] = _other_sizes(module, fp32, channels, size, multiple, "height" in dynamic)
    batch = timing_batch(images, cases)
    report["timing"] = timing(module, {"onnxruntime_fp32": fp32}, batch, repeats)
    if images and "embedding" in module.output_names:
        _write_reference(tmp / REFERENCE_FILE, fp32, images, module.output_names.index("embedding"), paths)
        report["reference_stats"] = REFERENCE_FILE
    report["validation_images"] = len(images)
    return report, cases, batch


def _export_onnx(
    module: nn.Module, path: Path, channels: int, size: int, multiple: int, opset: int | None, dynamic_spatial: bool
) -> list[str]:
    """Export with a dynamic batch (and height/width) axis; falls back to a dynamic batch only."""
    from torch.export import Dim

    side = max(size, 2 * multiple)  # a 1-patch (or 1-pixel feature map) example would be specialised on
    example = (torch.randn(2, channels, side, side),)
    batch = Dim("batch", min=1, max=4096)
    attempts = []
    if dynamic_spatial:
        steps = 16384 // multiple
        attempts.append(
            (
                {0: batch, 2: multiple * Dim("h", min=1, max=steps), 3: multiple * Dim("w", min=1, max=steps)},
                ["batch", "height", "width"],
            )
        )
    attempts.append(({0: batch}, ["batch"]))
    for index, (shapes, names) in enumerate(attempts):
        try:
            with quiet_exporter(), torch.no_grad():
                program = torch.onnx.export(
                    module,
                    example,
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=module.output_names,
                    dynamic_shapes=(shapes,),
                    opset_version=opset,
                    verbose=False,
                )
            program.save(str(path))
            return names
        except Exception as err:  # torch.export raises many types; the fallback keeps a usable export
            if index == len(attempts) - 1:
                raise
            log.warning(
                "export with dynamic height/width failed (%s: %s); exporting a fixed %dx%d input",
                type(err).__name__,
                str(err).splitlines()[0][:200],
                size,
                size,
            )
    raise AssertionError("unreachable")


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _image_paths(images: str | Path | Sequence[str | Path] | None, source: Path, limit: int) -> list[Path]:
    if images is None:
        return _validation_split(source, limit)
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if not folder.is_dir():
            raise DataError(f"calibration images: '{folder}' is not a folder; give a folder or a list of files.")
        found = sorted(p for p in folder.rglob("*") if is_image_path(p))
        if not found:
            raise DataError(f"calibration images: '{folder}' contains no image files.")
    else:
        found = [Path(p) for p in images]
    step = max(1, len(found) // limit)  # spread over the folder rather than the first class only
    return found[::step][:limit]


def _validation_split(source: Path, limit: int) -> list[Path]:
    """The run's validation (else test) images, when its data is recorded and still there: from
    splits.json for data it split itself, else from the split folders of its config's data.root."""
    split_file = source / "splits.json"
    if split_file.is_file():
        try:
            payload = json.loads(split_file.read_text())
            root, splits = Path(payload["root"]), payload["splits"]
        except (ValueError, KeyError, TypeError):
            return []
        names = splits.get("val") or splits.get("test") or []
        paths = [root / name for name in names]
    else:
        root = recorded_data_root(source)
        try:
            depth = root is not None and is_depth_layout(root)  # its depth maps are no calibration images
            reader = load_depth_dataset if depth else load_dataset
            spec = reader(root, auto_split=False) if root is not None and root.exists() else None
        except DataError:
            spec = None
        samples = (spec.splits.get("val") or spec.splits.get("test") or []) if spec else []
        paths = [s.path for s in samples]
    step = max(1, len(paths) // limit)
    return [p for p in paths[::step][:limit] if Path(p).is_file()]


def _parity_inputs(
    images: list[Tensor], channels: int, size: int, multiple: int, dynamic_spatial: bool
) -> dict[str, Tensor]:
    """Batches unlike the export example (batch 2, square): batch 3, batch 1 non-square, the real images."""
    gen = torch.Generator().manual_seed(0)
    cases = {f"random_batch3_{size}x{size}": torch.randn(3, channels, size, size, generator=gen)}
    if dynamic_spatial:
        cases[f"random_batch1_{size}x{size + multiple}"] = torch.randn(
            1, channels, size, size + multiple, generator=gen
        )
    for shape, group in group_by_shape(images).items():
        cases[f"images_{len(group)}_{shape[1]}x{shape[2]}"] = torch.stack(group)
    return cases


def _other_sizes(module: ExportModule, session, channels: int, size: int, multiple: int, dynamic: bool) -> dict:
    """How a size off the patch grid is treated: a segmenter pads it; otherwise ONNX Runtime refuses it
    when PyTorch does (ViT), or when it would answer differently from PyTorch (ConvNeXt floors, alike)."""
    if module.segment or not dynamic:
        return {"rule": "padded" if module.segment else "refused"}
    x = torch.randn(1, channels, size, size + max(1, multiple // 2), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = [t.numpy() for t in module(x)]
    except (ValueError, RuntimeError) as err:
        return {"rule": "refused", "probe": list(x.shape), "torch": str(err).splitlines()[0][:200]}
    diff = max(float(np.abs(e - g).max()) for e, g in zip(expected, run_session(session, x), strict=True))
    return {"rule": "run" if diff <= PARITY_GOAL else "refused", "probe": list(x.shape), "max_abs_diff": diff}


def _parity(module: ExportModule, session, cases: dict[str, Tensor]) -> dict[str, Any]:
    """Max abs difference of every output; for a segmenter also the share of pixels with the same class."""
    per_case, same, pixels, relative = {}, 0, 0, 0.0
    for name, x in cases.items():
        with torch.no_grad():
            expected = [t.numpy() for t in module(x)]
        got = run_session(session, x)
        per_case[name] = max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))
        if module.output_names == ["depth"]:  # metres: the error relative to the depth itself
            relative = max(relative, float((np.abs(expected[0] - got[0]) / np.abs(expected[0]).clip(1e-6)).max()))
        if module.segment:
            agree = expected[0].argmax(1) == got[0].argmax(1)
            same, pixels = same + int(agree.sum()), pixels + int(agree.size)
    worst = max(per_case.values())
    if worst > PARITY_GOAL:
        log.warning("ONNX Runtime differs from PyTorch by up to %.2e (goal %.0e)", worst, PARITY_GOAL)
    result = {"max_abs_diff": worst, "goal": PARITY_GOAL, "within_goal": worst <= PARITY_GOAL, "cases": per_case}
    if module.output_names == ["depth"]:
        result["max_rel_diff"] = relative
    elif module.segment:
        result["pixel_agreement"] = same / max(1, pixels)
    if module.detect:
        result["detections"] = detection_parity(module, session, cases)
    return result


def _write_reference(path: Path, session, images: list[Tensor], index: int, paths: list[Path]) -> None:
    """Per-dimension mean/std of the embedding: what 'normal' input looks like to the drift monitor."""
    embeddings = np.concatenate([run_session(session, torch.stack(g))[index] for g in group_by_shape(images).values()])
    stats = {
        "feature": "embedding",
        "n": len(embeddings),
        "mean": embeddings.mean(0).tolist(),
        "std": embeddings.std(0).tolist(),
        "images": [str(p) for p in paths[:5]],
    }
    write_text(path, json.dumps(stats))


def _log_report(out: Path, report: dict[str, Any]) -> None:
    """The figures for debug logs (the CLI prints them as a table; Python callers get the report)."""
    log.debug("exported %s: max |onnxruntime - torch| = %.2e", out, report["parity"]["max_abs_diff"])
    if "int8" in report:
        q = report["int8"]
        figure = q.get("top1_agreement", q.get("mean_cosine_vs_fp32"))
        log.debug(
            "int8 (%s): agreement %.4f on %d %s, %.2fx faster than fp32",
            q["method"],
            figure,
            q["n"],
            q["evaluated_on"],
            q["timing"]["int8_speedup_vs_fp32"],
        )


def _export_card(
    card: ModelCard, module: ExportModule, served: str, multiple: int, report: dict[str, Any], backbone_only: bool
) -> ModelCard:
    backbone = {k: v for k, v in card.backbone.items() if k != "weights_dir"}  # the weights are in the graph
    head: dict[str, Any] = {
        "type": "onnx",
        "file": served,
        "fp32_file": FP32_FILE,
        "input": INPUT_NAME,
        "outputs": module.output_names,
        "input_multiple": multiple,
        "other_sizes": report["other_sizes"]["rule"],
        "fixed_size": None if "height" in report["dynamic_axes"] else card.preprocessing.image_size,
        "source": {} if backbone_only else card.head,
    }
    exported = replace(
        card,
        task="embed" if backbone_only else card.task,
        classes=[] if backbone_only else card.classes,
        backbone=backbone,
        head=head,
        metrics={**card.metrics, "export": report},
    )
    exported.input_spec = input_spec(exported, module.output_names, multiple, head["other_sizes"])
    return exported
