"""The one place that decides how frozen features are computed: the fastest engine that agrees with eager.

`DINOTUNE_ENGINE` (auto | eager | onnxruntime | compile; default auto) or the `engine` argument picks:
- auto on CUDA: eager (bf16 autocast, channels_last for ConvNeXt); `compile` only when asked.
- auto on CPU: ONNX Runtime on the exported backbone when onnxruntime is installed and the job repays the
  one-off export (at least `EXPORT_MIN_IMAGES` images, or the graph is already on disk); else eager.
  torch.compile is not tried by default on CPU: its compile took 80 s for ViT-S on the 2-core CI machine,
  and it was no faster than ONNX Runtime (docs/performance.md).

On the first images of the first batch the candidate runs beside eager: it is kept only when its features
match eager's to `PARITY` (max abs difference, scaled by the features' magnitude when that exceeds 1) and
it took less time on them than eager did; otherwise, or when it cannot be built (an export error, a missing package),
extraction continues in eager with one log line. The check runs once per extractor; `choice` records it.
The outputs of the check are the first images' features (nothing is computed twice). A graph that passed
this check is recorded beside it (`<graph>.verdict.json`, with the runtime versions); a later run with the
same graph and versions checks parity on one image only and keeps the recorded speed verdict, so the
check costs about one image instead of `CHECK_IMAGES` in eager.

On the CPU every engine runs a batch in cache-sized chunks (`dinotune.features.chunks`), sized by the
first eager image of the check.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dinotune.atomic import write_text
from dinotune.backbones import Backbone
from dinotune.config import cache_home
from dinotune.errors import ConfigError
from dinotune.features.chunks import ActivationMeter, concat, in_chunks
from dinotune.features.engines import CompiledEngine, EagerEngine, Engine, OnnxEngine, graph_path
from dinotune.features.extract import feature_kinds

log = logging.getLogger(__name__)
ENGINES = ("auto", "eager", "onnxruntime", "compile")
PARITY = 1e-4  # fp32 engines against eager fp32
PARITY_BF16 = 2e-2  # CUDA: both sides under bf16 autocast, kernels round differently
CHECK_IMAGES = 8  # images of the first batch run in both engines: the parity check and the timing
EXPORT_MIN_IMAGES = 256  # below this the ~15 s export of a ViT-S costs more than ONNX Runtime saves


def requested_engine(engine: str | None = None) -> str:
    """The engine asked for: the argument, else `DINOTUNE_ENGINE`, else auto."""
    name = (engine or os.environ.get("DINOTUNE_ENGINE") or "auto").strip().lower()
    if name not in ENGINES:
        raise ConfigError(f"DINOTUNE_ENGINE={name!r} is not an engine; use one of {', '.join(ENGINES)}.")
    return name


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class EngineChoice:
    """What the first batch decided, for logs, benchmarks and tests."""

    name: str
    reason: str
    max_abs_diff: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # engine -> time on the first batch


def max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> tuple[float, float]:
    """(max abs difference over all kinds, largest magnitude of `a`): the parity figures."""
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    scale = max(float(a[k].float().abs().max()) for k in a)
    return diff, scale


class FeatureExtractor:
    """Callable `images -> {kind: (B, D) fp32 CPU tensor}` that picks its engine on the first batch."""

    def __init__(
        self,
        backbone: Backbone,
        kinds: tuple[str, ...] | None = None,
        *,
        engine: str | None = None,
        graph_dir: Path | None = None,
        expected_images: int | None = None,
    ) -> None:
        self.backbone, self.kinds = backbone, tuple(kinds or feature_kinds(backbone))
        self.requested = requested_engine(engine)
        self.graph_dir = Path(graph_dir) if graph_dir is not None else cache_home() / "engines"
        self.expected_images = expected_images
        self.eager = EagerEngine(backbone, self.kinds)
        self.engine: Engine | None = None
        self.choice: EngineChoice | None = None
        self.chunk: int | None = None  # images per engine call (CPU: cache-sized, `dinotune.features.chunks`)

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        if self.engine is None:
            return self._choose(images)
        return self._run(self.engine, images)

    def _run(self, engine: Engine, images: Tensor) -> dict[str, Tensor]:
        return in_chunks(engine, images, self.chunk)

    def _eager(self, images: Tensor) -> dict[str, Tensor]:
        """Eager features; on the CPU the first call also sizes the chunks, from its first image."""
        if self.chunk is not None or self.eager.device.type != "cpu":
            return self._run(self.eager, images)
        with ActivationMeter(self.backbone) as meter:
            head = self.eager(images[:1])
        self.chunk = meter.chunk()
        return head if len(images) == 1 else concat([head, self._run(self.eager, images[1:])])

    def _candidate(self, images: Tensor) -> tuple[str | None, str]:
        """The engine worth trying beside eager on this machine and job, and why."""
        cuda = self.eager.device.type == "cuda"
        if self.requested == "eager":
            return None, "eager requested"
        if self.requested == "compile":
            return "compile", "compile requested"
        if self.requested == "onnxruntime" or not cuda:
            if cuda:
                return None, "onnxruntime runs on the CPU only; eager on CUDA"
            if not onnxruntime_available():
                return None, "onnxruntime is not installed (pip install 'dinotune[export]')"
            if self.requested == "auto" and not self._job_is_large() and not self._graph_exists(images):
                return None, f"fewer than {EXPORT_MIN_IMAGES} images: exporting would cost more than it saves"
            return "onnxruntime", f"{self.requested}: ONNX Runtime on the CPU"
        return None, "eager with bf16 autocast on CUDA"

    def _job_is_large(self) -> bool:
        return self.expected_images is None or self.expected_images >= EXPORT_MIN_IMAGES

    def _graph_exists(self, images: Tensor) -> bool:
        return graph_path(self.graph_dir, self.backbone, self.kinds, tuple(images.shape[1:])).is_file()

    def _build(self, name: str, images: Tensor) -> Engine:
        if name == "compile":
            return CompiledEngine(self.backbone, self.kinds)
        return OnnxEngine(self.backbone, self.kinds, tuple(images.shape[1:]), self.graph_dir)

    def _choose(self, images: Tensor) -> dict[str, Tensor]:
        """Run the first images in eager and in the candidate; keep the candidate if it agrees and is faster.
        The check's outputs are the features of those images; the rest of the batch runs in the engine kept."""
        name, reason = self._candidate(images)
        self.engine, self.choice = self.eager, EngineChoice("eager", reason)
        if name is None:
            return self._eager(images)
        try:
            candidate = self._build(name, images)
        except Exception as err:  # exporters and runtimes raise many types; eager always works
            return self._failed(name, err, images)
        known = read_verdict(candidate)
        if known is not None and self.requested == "auto" and known["speedup"] <= 1.0:
            known = None  # recorded as slower: measure again (that run's machine may have been busy)
        check = images[: 1 if known else CHECK_IMAGES]
        reference, eager_seconds = timed_call(self._eager, check, warm_up=not known)
        try:
            got, seconds = timed_call(lambda x: self._run(candidate, x), check, warm_up=not known)
        except Exception as err:
            return self._failed(name, err, images)
        self.choice.seconds = {"eager": eager_seconds, name: seconds}
        self._judge(name, candidate, reference, got, known)
        head = got if self.engine is candidate else reference
        if len(check) == len(images):
            return head
        return concat([head, self._run(self.engine, images[len(check) :])])

    def _failed(self, name: str, err: Exception, images: Tensor) -> dict[str, Tensor]:
        assert self.choice is not None
        self.choice.reason = f"{name} failed ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
        log.warning("feature extraction: %s; using eager PyTorch", self.choice.reason)
        return self._eager(images)

    def _judge(
        self, name: str, candidate: Engine, reference: dict[str, Tensor], got: dict[str, Tensor], known: dict | None
    ) -> None:
        diff, scale = max_difference(reference, got)
        goal = (PARITY_BF16 if self.eager.device.type == "cuda" else PARITY) * max(1.0, scale)
        assert self.choice is not None
        seconds, self.choice.max_abs_diff = self.choice.seconds, diff
        speedup = known["speedup"] if known else seconds["eager"] / max(seconds[name], 1e-9)
        if diff > goal:
            self.choice.reason = f"{name} differs from eager by {diff:.2e} (goal {goal:.0e})"
            log.warning("feature extraction: %s; using eager PyTorch", self.choice.reason)
            forget_verdict(candidate)
        elif speedup <= 1.0 and self.requested == "auto":
            self.choice.reason = f"{name} was not faster on the first batch ({seconds[name]:.2f} s vs eager)"
            log.info("feature extraction: %s; using eager PyTorch", self.choice.reason)
        else:
            self.engine, self.choice.name = candidate, name
            where = f"on {len(next(iter(got.values())))} image(s)"
            when = "measured when the graph was first checked" if known else "on the first batch"
            self.choice.reason = f"{name}: agrees with eager to {diff:.1e} {where}, {speedup:.2f}x eager ({when})"
            calls = f", {self.chunk} images per call" if self.chunk else ""
            log.info("feature extraction: %s%s", self.choice.reason, calls)
            if known is None:
                write_verdict(candidate, {"max_abs_diff": diff, "speedup": speedup, "seconds": seconds})

    def describe(self) -> dict[str, Any]:
        """The choice as plain data (benchmarks write it)."""
        if self.choice is None:
            return {"engine": None, "requested": self.requested}
        return {"requested": self.requested, "engine": self.choice.name, "reason": self.choice.reason,
                "max_abs_diff": self.choice.max_abs_diff, "first_batch_seconds": self.choice.seconds,
                "images_per_call": self.chunk}  # fmt: skip


def timed_call(engine: Engine, images: Tensor, warm_up: bool) -> tuple[dict[str, Tensor], float]:
    """(features, seconds); `warm_up` first runs one image untimed (allocation, compilation)."""
    if warm_up:
        engine(images[:1])
    start = time.perf_counter()
    out = engine(images)
    return out, time.perf_counter() - start


def _verdict_path(engine: Engine) -> Path | None:
    path = getattr(engine, "path", None)  # engines built from a file on disk (ONNX Runtime) have one
    return Path(path).with_suffix(".verdict.json") if path is not None else None


def _runtime_versions() -> dict[str, str]:
    import onnxruntime

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def read_verdict(engine: Engine) -> dict[str, Any] | None:
    """The recorded check of this engine's graph, when it was made with the same runtime versions."""
    path = _verdict_path(engine)
    if path is None or not path.is_file():
        return None
    try:
        verdict = json.loads(path.read_text())
        verdict["speedup"] = float(verdict["speedup"])
        same_runtime = verdict.get("versions") == _runtime_versions()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return verdict if same_runtime else None


def write_verdict(engine: Engine, verdict: dict[str, Any]) -> None:
    path = _verdict_path(engine)
    if path is not None:
        write_text(path, json.dumps({**verdict, "versions": _runtime_versions()}, indent=2))


def forget_verdict(engine: Engine) -> None:
    path = _verdict_path(engine)
    if path is not None:
        path.unlink(missing_ok=True)
