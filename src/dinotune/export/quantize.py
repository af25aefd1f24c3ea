"""int8 quantisation of an exported graph, judged against its fp32 twin: agreement and speed side by side."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dinotune.model.onnx import INPUT_NAME, onnx_session

_QUANTIZED_OPS = ["MatMul", "Gemm"]  # ConvInteger has poor CPU kernels; the linear layers hold the FLOPs
AGREEMENT_BOUND = 0.99  # top-1 agreement and mean embedding cosine of int8 vs fp32
MIN_SPEEDUP = 1.1  # int8 must be clearly faster: smaller ratios are within a shared CPU's noise


def group_by_shape(images: list[Tensor]) -> dict[tuple[int, ...], list[Tensor]]:
    groups: dict[tuple[int, ...], list[Tensor]] = {}
    for image in images:
        groups.setdefault(tuple(image.shape), []).append(image)
    return groups


def run_session(session, x: Tensor | np.ndarray) -> list[np.ndarray]:
    array = x.numpy() if isinstance(x, Tensor) else x
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(array, dtype=np.float32)})


def timing_batch(images: list[Tensor], cases: dict[str, Tensor]) -> Tensor:
    if images:
        group = max(group_by_shape(images).values(), key=len)
        return torch.stack(group[:8])
    return next(iter(cases.values()))


def timing(module: nn.Module | None, sessions: dict[str, Any], x: Tensor, repeats: int) -> dict[str, Any]:
    """Median seconds per batch, engines interleaved so a busy shared CPU hurts them alike."""
    runners = {name: (lambda s=s: run_session(s, x)) for name, s in sessions.items()}
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
            statistics.median(times["torch_eager"]) / statistics.median(times["onnxruntime_fp32"]), 3
        )
    return result


def quantize_graph(
    fp32_path: Path,
    int8_path: Path,
    fp32,
    cases: dict[str, Tensor],
    calibration: list[Tensor] | None,
    batch: Tensor,
    repeats: int,
    backbone_only: bool,
) -> dict[str, Any]:
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

            quantize_static(
                str(fp32_path),
                str(int8_path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=_QUANTIZED_OPS,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        else:
            quantize_dynamic(
                str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, op_types_to_quantize=_QUANTIZED_OPS
            )
    int8 = onnx_session(int8_path)
    result: dict[str, Any] = {
        "file": int8_path.name,
        "method": "static" if calibration else "dynamic",
        "size_ratio": round(int8_path.stat().st_size / fp32_path.stat().st_size, 3),
    }
    result.update(_agreement(fp32, int8, cases, backbone_only))
    speed = timing(None, {"onnxruntime_fp32": fp32, "onnxruntime_int8": int8}, batch, repeats)
    speed["int8_speedup_vs_fp32"] = round(speed["onnxruntime_fp32_ms"] / speed["onnxruntime_int8_ms"], 3)
    result["timing"] = speed
    result["kept"], result["reasons"] = int8_verdict(result)
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
    """int8 against fp32 on the real images (else the random inputs): top-1 agreement of the logits (per
    image, or per pixel for a segmenter) and the cosine of the embeddings (a segmenter has none: its
    logit maps, flattened per image), since int8 can keep top-1 on a few images while features collapse."""
    real = {k: v for k, v in cases.items() if k.startswith("images_")} or cases
    agree, total, ours, theirs, diffs = 0, 0, [], [], []
    for x in real.values():
        a, b = run_session(fp32, x), run_session(int8, x)
        diffs.append(max(float(np.abs(u - v).max()) for u, v in zip(a, b, strict=True)))
        feature = 0 if backbone_only or len(a) == 1 else 1  # outputs: (embedding, ...) or (logits, embedding)
        ours.append(a[feature].reshape(len(a[feature]), -1))
        theirs.append(b[feature].reshape(len(b[feature]), -1))
        if not backbone_only:
            same = a[0].argmax(1) == b[0].argmax(1)  # per image, or per pixel for a segmenter
            agree, total = agree + int(same.sum()), total + int(same.size)
    cosines, raw = centred_cosines(np.concatenate(ours), np.concatenate(theirs))
    result: dict[str, Any] = {
        "evaluated_on": "images" if real is not cases else "random inputs",
        "n": len(cosines),
        "max_abs_diff_vs_fp32": max(diffs),
        "cosine_of": "embedding" if backbone_only or len(a) > 1 else "logit maps",
        "cosine_centred": len(cosines) > 1,
        "mean_cosine_vs_fp32": float(np.mean(cosines)),
        "min_cosine_vs_fp32": float(np.min(cosines)),
        "mean_raw_cosine_vs_fp32": float(np.mean(raw)),
    }
    if not backbone_only:
        result["top1_agreement"] = agree / total
        result["top1_n"] = total
    return result


def centred_cosines(fp32: np.ndarray, int8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image cosine of int8 to fp32 after subtracting fp32's mean embedding from both (with one image:
    uncentred), and the uncentred cosine. Centring matters because embeddings share a large common
    direction (on random weights above all): uncentred cosines stay near 1 even where int8 has scrambled
    what tells the images apart; centred, only what varies between images is compared."""
    raw = _cosine(fp32, int8)
    if len(fp32) < 2:
        return raw, raw
    mean = fp32.astype(np.float64).mean(0, keepdims=True)
    return _cosine(fp32 - mean, int8 - mean), raw


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def int8_verdict(result: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether int8 may be the served model, and why not: it must be faster than fp32 and agree with it
    on real images (top-1 and embedding cosine, each >= the bound); otherwise fp32 is served."""
    reasons = []
    if result["evaluated_on"] != "images":
        reasons.append("agreement not measured on real images (give --calibration FOLDER or keep the run's data)")
    top1 = result.get("top1_agreement")
    if top1 is not None and top1 < AGREEMENT_BOUND:
        reasons.append(f"top-1 agreement {top1:.4f} < {AGREEMENT_BOUND}")
    if result["mean_cosine_vs_fp32"] < AGREEMENT_BOUND:
        centred = "centred " if result.get("cosine_centred") else ""
        reasons.append(f"{centred}{result['cosine_of']} cosine {result['mean_cosine_vs_fp32']:.4f} < {AGREEMENT_BOUND}")
    speedup = result["timing"]["int8_speedup_vs_fp32"]
    if speedup < MIN_SPEEDUP:
        reasons.append(f"{speedup:.2f}x the fp32 speed (needs >= {MIN_SPEEDUP}x)")
    return not reasons, reasons
