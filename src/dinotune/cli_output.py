"""What the CLI prints besides the verbs' own lines: quiet defaults, the export table, the Ctrl-C message."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any


class _OursOrWarnings(logging.Filter):
    """Our INFO lines, and everybody's warnings and errors: third-party INFO chatter (Lightning's tips and
    summaries, transformers' loading notes) is shown with --verbose only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(("dinotune", "__main__")) or record.levelno >= logging.WARNING


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    logging.getLogger("dinotune").warning("%s", message)  # the message only: no source path and code line


def quiet() -> None:
    """One place for what the CLI hides by default: third-party warnings, INFO logs and progress bars."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights", "Writing model shards"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if hub := sys.modules.get("huggingface_hub"):  # imported already: it read the variable above too early
        hub.utils.disable_progress_bars()
    if transformers := sys.modules.get("transformers"):  # None where it is blocked (slim serving)
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing shards"
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OursOrWarnings())
    warnings.filterwarnings("ignore")  # third-party deprecation and advice warnings
    warnings.filterwarnings("once", module=r"dinotune")  # ours (e.g. RANDOM WEIGHTS), once per message
    warnings.showwarning = _show_warning


def export_summary(folder: Path, report: dict[str, Any]) -> str:
    """A few lines a person reads; the whole report is in the export's model.json (metrics.export)."""
    parity = report["parity"]
    axes, within = ", ".join(report["dynamic_axes"]), "within" if parity["within_goal"] else "OVER"
    lines = [
        f"exported {folder}/{report['file']} (opset {report['opset']}, dynamic {axes})",
        f"  max |onnxruntime - torch|  {parity['max_abs_diff']:.2e}  ({within} the goal {parity['goal']:.0e})",
    ]
    if "pixel_agreement" in parity:
        lines.append(f"  pixels agreeing           {parity['pixel_agreement']:.4%}")
    if "max_rel_diff" in parity:  # depth: the error relative to the depth itself
        lines.append(f"  max relative difference   {parity['max_rel_diff']:.2e}  (depth; tests require <= 1e-3)")
    if "detections" in parity:  # boxes after the same NMS, matched by class
        boxes = parity["detections"]
        verdict = "within" if boxes["within_goal"] else "OVER"
        lines.append(f"  boxes after NMS           max diff {boxes['max_box_diff']:.2e} px, {boxes['unmatched']} "
                     f"unmatched ({verdict} the goal {boxes['goal_px']:.0e} px)")  # fmt: skip
    speed = report["timing"].get("onnxruntime_speedup_vs_torch")
    if speed:
        lines.append(f"  onnxruntime vs torch      {speed:.2f}x")
    if "int8" in report:
        q = report["int8"]
        agreement = q.get("top1_agreement", q.get("mean_cosine_vs_fp32"))
        lines.append(f"  int8 ({q['method']})           agreement {agreement:.4f} on {q['n']} {q['evaluated_on']}, "
                     f"{q['timing']['int8_speedup_vs_fp32']:.2f}x fp32, {q['size_ratio']:.2f}x the size")  # fmt: skip
        if "kept" in q:
            verdict = "int8 (faster and agrees)" if q["kept"] else "fp32: int8 " + "; ".join(q["reasons"])
            lines.append(f"  served                    {report['served']} - {verdict}")
    lines.append(f"  checked on {report['validation_images']} real images; full report: {folder}/model.json")
    return "\n".join(lines)


def archs_table() -> str:
    """Every architecture with its size (counted on the meta device: no memory, no download) and weights."""
    import torch

    from dinotune.backbones.convert import build_hf_model
    from dinotune.backbones.load import spec_to_arch
    from dinotune.backbones.specs import ARCHS

    rows = [("ARCH", "FAMILY", "PARAMS", "WIDTH", "DEPTH", "PATCH", "WEIGHTS (Hugging Face ids)")]
    for spec in ARCHS.values():
        with torch.device("meta"):
            params = sum(p.numel() for p in build_hf_model(spec_to_arch(spec)).parameters())
        depth = spec.depth or sum(spec.depths)
        size = f"{params / 1e6:,.1f}M" if params >= 1e6 else f"{params / 1e3:,.0f}k"
        ids = ", ".join(spec.hub_ids.values()) or "none: random weights, for tests"
        rows.append((spec.name, spec.family, size, str(spec.embed_dim), str(depth), str(spec.patch_size), ids))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)
