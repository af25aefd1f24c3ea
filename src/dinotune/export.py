"""ONNX export of a model folder that checks itself: ONNX Runtime against PyTorch, int8 against fp32.

The graph comes from `torch.export` (the dynamo exporter), which traces the RoPE table from symbolic
input sizes, so one file serves any batch size and any height/width that is a multiple of the patch
size (a traced constant RoPE would be silently wrong at other sizes). The export folder holds
`model.onnx` (+ `model.int8.onnx`), a `model.json` card with the verification figures under
`metrics.export`, and `reference_stats.json` (mean/std of the embedding on real images) that the
server's drift monitor compares live traffic against.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dinotune.atomic import atomic_dir, write_text
from dinotune.backbones import Backbone
from dinotune.errors import ConfigError, DataError
from dinotune.features.extract import compute_features
from dinotune.model import ModelCard, load_model, read_card
from dinotune.tasks.probe import LinearHead, build_input, parse_feature_choice

log = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REFERENCE_FILE = "reference_stats.json"
INPUT_NAME = "images"
PARITY_GOAL = 1e-4  # max abs difference ONNX Runtime vs PyTorch, fp32
_QUANTIZED_OPS = ["MatMul", "Gemm"]  # ConvInteger has poor CPU kernels; the linear layers hold the FLOPs


class ExportModule(nn.Module):
    """images -> (logits, embedding), or (embedding, patch_mean) for a backbone-only export.

    `embedding` is the normed class token (pooled feature for ConvNeXt): the drift monitor's input.
    """

    def __init__(self, backbone: Backbone, head: LinearHead | None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        kinds = parse_feature_choice(head.feature_choice) if head is not None else ("patch_mean",)
        self.kinds = tuple(dict.fromkeys(("cls", *kinds)))

    @property
    def output_names(self) -> list[str]:
        return ["embedding", "patch_mean"] if self.head is None else ["logits", "embedding"]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = compute_features(self.backbone, images, self.kinds)
        if self.head is None:
            return features["cls"], features["patch_mean"]
        return self.head(build_input(features, self.head.feature_choice)), features["cls"]


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
    max_images: int = 64,
    dynamic_spatial: bool = True,
    timing_repeats: int = 5,
) -> dict[str, Any]:
    """Export the model folder `source` to the folder `out` and return the verification report.

    `calibration_images` (a folder or a list of files; default: the run's validation split when its
    splits.json still points at the data) are used for parity, int8 agreement, static calibration
    (`static=True`) and the drift reference; without them only random inputs are checked and no drift
    reference is written.
    """
    if fmt != "onnx":
        raise ConfigError(f"export format '{fmt}' is not supported; use fmt='onnx'.")
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize='{quantize}' is not supported; use 'int8' or None.")
    import onnxruntime  # noqa: F401  # fail early with ImportError if the [export] extra is missing

    source, out = Path(source), Path(out)
    if read_card(source).head.get("type") == "onnx":
        raise ConfigError(f"'{source}' is already an ONNX export; export the run or model folder it came from.")
    model, card = load_model(source, device="cpu")
    module = ExportModule(model.backbone, None if backbone_only else model.head).eval()
    multiple = model.backbone.input_multiple
    size = card.preprocessing.image_size
    paths = _image_paths(calibration_images, source, max_images)
    images = _load_images(paths, card, multiple)
    if static and quantize and not images:
        raise ConfigError("static int8 quantisation needs calibration_images (a folder or list of image files).")
    _check_out(out)
    with atomic_dir(out, overwrite=True) as tmp:
        dynamic = _export_onnx(module, tmp / FP32_FILE, card.preprocessing.channels, size, multiple, opset,
                               dynamic_spatial)
        fp32 = _session(tmp / FP32_FILE)
        report: dict[str, Any] = {"format": "onnx", "file": FP32_FILE, "opset": _opset(tmp / FP32_FILE),
                                  "dynamic_axes": dynamic, "outputs": module.output_names,
                                  "torch": torch.__version__}
        cases = _parity_inputs(images, card.preprocessing.channels, size, multiple, "height" in dynamic)
        report["parity"] = _parity(module, fp32, cases)
        batch = _timing_batch(images, cases)
        report["timing"] = _timing(module, {"onnxruntime_fp32": fp32}, batch, timing_repeats)
        served = FP32_FILE
        if quantize:
            report["int8"] = _quantize(tmp / FP32_FILE, tmp / INT8_FILE, fp32, cases, images if static else None,
                                       batch, timing_repeats, backbone_only)
            served = INT8_FILE
        if images:
            _write_reference(tmp / REFERENCE_FILE, fp32, images, module.output_names.index("embedding"), paths)
            report["reference_stats"] = REFERENCE_FILE
        report["validation_images"] = len(images)
        export_card = _export_card(card, module, served, multiple, report, backbone_only)
        write_text(tmp / "model.json", export_card.to_json())
    _log_report(out, report)
    return {"folder": str(out), **report}


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier export (a typo must not delete a dataset)."""
    if out.exists() and any(out.iterdir()):
        card_path = out / "model.json"
        is_export = card_path.is_file() and json.loads(card_path.read_text()).get("head", {}).get("type") == "onnx"
        if not is_export:
            raise ConfigError(f"'{out}' exists and is not a dinotune export; choose an empty or new folder.")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs one warning per missing torchvision op (nothing here uses torchvision) and its
    graph optimiser hundreds of INFO lines; only errors are worth showing."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_onnx(module: nn.Module, path: Path, channels: int, size: int, multiple: int, opset: int | None,
                 dynamic_spatial: bool) -> list[str]:
    """Export with a dynamic batch (and height/width) axis; falls back to a dynamic batch only."""
    from torch.export import Dim

    side = max(size, 2 * multiple)  # a 1-patch (or 1-pixel feature map) example would be specialised on
    example = (torch.randn(2, channels, side, side),)
    batch = Dim("batch", min=1, max=4096)
    attempts = []
    if dynamic_spatial:
        steps = 16384 // multiple
        attempts.append(({0: batch, 2: multiple * Dim("h", min=1, max=steps), 3: multiple * Dim("w", min=1, max=steps)},
                         ["batch", "height", "width"]))
    attempts.append(({0: batch}, ["batch"]))
    for index, (shapes, names) in enumerate(attempts):
        try:
            with _quiet_exporter(), torch.no_grad():
                program = torch.onnx.export(module, example, dynamo=True, input_names=[INPUT_NAME],
                                            output_names=module.output_names, dynamic_shapes=(shapes,),
                                            opset_version=opset, verbose=False)
            program.save(str(path))
            return names
        except Exception as err:  # torch.export raises many types; the fallback keeps a usable export
            if index == len(attempts) - 1:
                raise
            log.warning("export with dynamic height/width failed (%s: %s); exporting a fixed %dx%d input",
                        type(err).__name__, str(err).splitlines()[0][:200], size, size)
    raise AssertionError("unreachable")


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _image_paths(images: str | Path | Sequence[str | Path] | None, source: Path, limit: int) -> list[Path]:
    from dinotune.data.decode import is_image_path

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
    """The run's validation (else test) images, when splits.json is there and its data still exists."""
    split_file = source / "splits.json"
    if not split_file.is_file():
        return []
    try:
        payload = json.loads(split_file.read_text())
        root, splits = Path(payload["root"]), payload["splits"]
    except (ValueError, KeyError, TypeError):
        return []
    names = splits.get("val") or splits.get("test") or []
    step = max(1, len(names) // limit)
    paths = [root / name for name in names[::step][:limit]]
    return [p for p in paths if p.is_file()]


def _load_images(paths: list[Path], card: ModelCard, multiple: int) -> list[Tensor]:
    prep = card.preprocessing
    return [prep.load(p, multiple) for p in paths]


def _parity_inputs(images: list[Tensor], channels: int, size: int, multiple: int,
                   dynamic_spatial: bool) -> dict[str, Tensor]:
    """Batches unlike the export example (batch 2, square): batch 3, batch 1 non-square, the real images."""
    gen = torch.Generator().manual_seed(0)
    cases = {f"random_batch3_{size}x{size}": torch.randn(3, channels, size, size, generator=gen)}
    if dynamic_spatial:
        cases[f"random_batch1_{size}x{size + multiple}"] = torch.randn(1, channels, size, size + multiple,
                                                                       generator=gen)
    for shape, group in _group_by_shape(images).items():
        cases[f"images_{len(group)}_{shape[1]}x{shape[2]}"] = torch.stack(group)
    return cases


def _group_by_shape(images: list[Tensor]) -> dict[tuple[int, ...], list[Tensor]]:
    groups: dict[tuple[int, ...], list[Tensor]] = {}
    for image in images:
        groups.setdefault(tuple(image.shape), []).append(image)
    return groups


def _run(session, x: Tensor | np.ndarray) -> list[np.ndarray]:
    array = x.numpy() if isinstance(x, Tensor) else x
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(array, dtype=np.float32)})


def _parity(module: nn.Module, session, cases: dict[str, Tensor]) -> dict[str, Any]:
    per_case = {}
    for name, x in cases.items():
        with torch.no_grad():
            expected = [t.numpy() for t in module(x)]
        got = _run(session, x)
        per_case[name] = max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))
    worst = max(per_case.values())
    if worst > PARITY_GOAL:
        log.warning("ONNX Runtime differs from PyTorch by up to %.2e (goal %.0e)", worst, PARITY_GOAL)
    return {"max_abs_diff": worst, "goal": PARITY_GOAL, "within_goal": worst <= PARITY_GOAL, "cases": per_case}


def _timing_batch(images: list[Tensor], cases: dict[str, Tensor]) -> Tensor:
    if images:
        group = max(_group_by_shape(images).values(), key=len)
        return torch.stack(group[:8])
    return next(iter(cases.values()))


def _timing(module: nn.Module | None, sessions: dict[str, Any], x: Tensor, repeats: int) -> dict[str, Any]:
    """Median seconds per batch, engines interleaved so a busy shared CPU hurts them alike."""
    runners = {name: (lambda s=s: _run(s, x)) for name, s in sessions.items()}
    if module is not None:
        def eager() -> None:
            with torch.inference_mode():
                module(x)
        runners = {"torch_eager": eager, **runners}
    for run in runners.values():
        run()  # warm-up: allocations, thread pools
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(max(1, repeats)):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    result: dict[str, Any] = {"batch": list(x.shape), "repeats": repeats}
    result.update({f"{name}_ms": round(1000 * statistics.median(t), 3) for name, t in times.items()})
    if "torch_eager" in times and "onnxruntime_fp32" in times:
        result["onnxruntime_speedup_vs_torch"] = round(
            statistics.median(times["torch_eager"]) / statistics.median(times["onnxruntime_fp32"]), 3)
    return result


def _quantize(fp32_path: Path, int8_path: Path, fp32, cases: dict[str, Tensor], calibration: list[Tensor] | None,
              batch: Tensor, repeats: int, backbone_only: bool) -> dict[str, Any]:
    """int8 weights (dynamic: activations quantised per batch at run time; static: ranges calibrated)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_warning():
        if calibration:
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.items = iter(calibration)

                def get_next(self) -> dict[str, np.ndarray] | None:
                    item = next(self.items, None)
                    return None if item is None else {INPUT_NAME: item[None].numpy()}

            quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=_QUANTIZED_OPS, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        else:
            quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8,
                             op_types_to_quantize=_QUANTIZED_OPS)
    int8 = _session(int8_path)
    result: dict[str, Any] = {"file": int8_path.name, "method": "static" if calibration else "dynamic",
                              "size_ratio": round(int8_path.stat().st_size / fp32_path.stat().st_size, 3)}
    result.update(_agreement(fp32, int8, cases, backbone_only))
    timing = _timing(None, {"onnxruntime_fp32": fp32, "onnxruntime_int8": int8}, batch, repeats)
    timing["int8_speedup_vs_fp32"] = round(timing["onnxruntime_fp32_ms"] / timing["onnxruntime_int8_ms"], 3)
    result["timing"] = timing
    return result


@contextlib.contextmanager
def _quiet_root_warning() -> Iterator[None]:
    """onnxruntime.quantization logs on the root logger: one INFO line per tensor, and 'consider
    pre-processing' (its shape inference cannot handle symbolic height/width; quantisation is correct
    without it). Keep only its errors."""
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "onnxruntime" not in record.pathname or record.levelno >= logging.ERROR

    root, drop = logging.getLogger(), Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _agreement(fp32, int8, cases: dict[str, Tensor], backbone_only: bool) -> dict[str, Any]:
    """Top-1 agreement of int8 with fp32 (classifier), or embedding cosine similarity (backbone only)."""
    real = {k: v for k, v in cases.items() if k.startswith("images_")} or cases
    agree, total, cosines, diffs = 0, 0, [], []
    for x in real.values():
        a, b = _run(fp32, x)[0], _run(int8, x)[0]
        diffs.append(float(np.abs(a - b).max()))
        if backbone_only:
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
            cosines.extend(cos.tolist())
        else:
            agree += int((a.argmax(1) == b.argmax(1)).sum())
        total += len(a)
    result: dict[str, Any] = {"evaluated_on": "images" if real is not cases else "random inputs", "n": total,
                              "max_abs_diff_vs_fp32": max(diffs)}
    if backbone_only:
        result["mean_cosine_vs_fp32"] = float(np.mean(cosines))
    else:
        result["top1_agreement"] = agree / total
    return result


def _write_reference(path: Path, session, images: list[Tensor], index: int, paths: list[Path]) -> None:
    """Per-dimension mean/std of the embedding: what 'normal' input looks like to the drift monitor."""
    embeddings = np.concatenate([_run(session, torch.stack(g))[index] for g in _group_by_shape(images).values()])
    stats = {"feature": "embedding", "n": len(embeddings), "mean": embeddings.mean(0).tolist(),
             "std": embeddings.std(0).tolist(), "images": [str(p) for p in paths[:5]]}
    write_text(path, json.dumps(stats))


def _export_card(card: ModelCard, module: ExportModule, served: str, multiple: int, report: dict[str, Any],
                 backbone_only: bool) -> ModelCard:
    backbone = {k: v for k, v in card.backbone.items() if k != "weights_dir"}  # the weights are in the graph
    head: dict[str, Any] = {"type": "onnx", "file": served, "fp32_file": FP32_FILE, "input": INPUT_NAME,
                            "outputs": module.output_names, "input_multiple": multiple}
    if not backbone_only:
        head["feature_choice"] = card.head.get("feature_choice")
    return replace(card, task="embed" if backbone_only else card.task, classes=[] if backbone_only else card.classes,
                   backbone=backbone, head=head, metrics={**card.metrics, "export": report})


def _log_report(out: Path, report: dict[str, Any]) -> None:
    log.info("exported %s: max |onnxruntime - torch| = %.2e", out, report["parity"]["max_abs_diff"])
    if "int8" in report:
        q = report["int8"]
        figure = q.get("top1_agreement", q.get("mean_cosine_vs_fp32"))
        log.info("int8 (%s): agreement %.4f on %d %s, %.2fx faster than fp32", q["method"], figure, q["n"],
                 q["evaluated_on"], q["timing"]["int8_speedup_vs_fp32"])

