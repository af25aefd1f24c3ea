"""The `dinotune` command: a thin typer layer, one subcommand per API verb.

User errors (`DinotuneError`) print one line that says what to fix and exit with code 2; any other
exception is a bug and keeps its traceback. `--verbose` shows tracebacks for user errors too.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from dinotune.cli_data import data_app
from dinotune.cli_help import (
    CLI,
    QUICKSTART_BACKBONE,
    BackboneOpt,
    ConfigOpt,
    ImageSizeOpt,
    OutOpt,
    OverridesArg,
    OverwriteOpt,
)
from dinotune.cli_output import export_summary, quiet
from dinotune.cli_run import hoist_global_flags, run_app
from dinotune.cli_vocabulary import config_values
from dinotune.config import load_config
from dinotune.run_folder import new_run_dir

app = CLI(  # plain help: no <bool>/{arg} placeholders, readable in logs too
    name="dinotune",
    help="Turn DINOv3 vision foundation models into the best model for your own images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"verbose": False}


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks, debug logs and library warnings."),
    silent: bool = typer.Option(False, "--quiet", "-q", help="Print only warnings, errors and the results."),
) -> None:
    _state["verbose"] = verbose
    level = logging.DEBUG if verbose else logging.WARNING if silent else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    if not verbose:
        quiet()


@app.command()
def archs() -> None:
    """List the DINOv3 architectures: size, shape and the Hugging Face ids of their weights.

    \b
    Example:
      $ dinotune archs
    """
    from dinotune.cli_output import archs_table

    typer.echo(archs_table())


@app.command()
def convert(
    src: Path = typer.Argument(..., metavar="SRC", help="Official .pth or Hugging Face folder."),
    dst: Path = typer.Argument(..., metavar="DST", help="Hugging Face folder (from a .pth) or .pth (from a folder)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Convert an official DINOv3 checkpoint to a Hugging Face folder, or back (lossless).

    \b
    Example (the backbone a pretrain run continued):
      $ dinotune convert runs/ssl/backbone.pth backbone_hf
    """
    from dinotune.verbs.convert import convert_checkpoint

    out = convert_checkpoint(src, dst, overwrite=overwrite)
    typer.echo(f"wrote {out}")


@app.command()
def embed(
    data: Path = typer.Argument(..., metavar="DATA", help="Folder of images (searched recursively)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output .safetensors file (or `out:` in --config)."),
    backbone: str = BackboneOpt,
    image_size: int = typer.Option(None, help="Input side in pixels, a multiple of the patch size."),
    batch_size: int = typer.Option(None, help="Images per batch."),
    num_workers: int = typer.Option(None, help="DataLoader worker processes."),
    config: Path = ConfigOpt,
    overrides: list[str] = OverridesArg,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Write CLS and mean-patch embeddings of every image in a folder to a safetensors file.

    \b
    Examples:
      $ dinotune embed images --out embeddings.safetensors
      $ dinotune embed images -c configs/embed.yaml --out embeddings.safetensors image_size=32 --overwrite
    """
    from dinotune.verbs.embed import EmbedConfig, run_embed

    base = config_values(
        "embed", data=data, out=out, backbone=backbone, image_size=image_size, batch_size=batch_size,
        num_workers=num_workers,
    )  # fmt: skip
    cfg = load_config(EmbedConfig, config, overrides, base=base)
    result = run_embed(cfg, overwrite=overwrite)
    typer.echo(f"wrote {result.run_dir} ({result.metrics['count']} images, dim {result.metrics['dim']})")


@app.command()
def probe(
    data: Path = typer.Argument(..., metavar="DATA", help="Labelled dataset (ImageFolder, CSV or JSON annotations)."),
    backbone: str = BackboneOpt,
    out: Path = OutOpt,
    image_size: int = ImageSizeOpt,
    config: Path = ConfigOpt,
    overrides: list[str] = OverridesArg,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Linear-probe sweep + kNN on frozen features; saves the best head as a model.

    \b
    Examples:
      $ dinotune probe images -o runs/probe
      $ dinotune probe images -o runs/probe10 --image-size 32 sweep.methods=[lbfgs,sgd] sweep.epochs=10
    """
    from dinotune.verbs.probe import ProbeConfig, run_probe

    base = config_values("probe", data=data, image_size=image_size, backbone=backbone, out=out)
    result = run_probe(load_config(ProbeConfig, config, overrides, base=base), overwrite=overwrite)
    typer.echo(f"run folder: {result.run_dir}")


@app.command()
def knn(
    data: Path = typer.Argument(..., metavar="DATA", help="Labelled dataset."),
    backbone: str = BackboneOpt,
    out: Path = OutOpt,
    image_size: int = ImageSizeOpt,
    config: Path = ConfigOpt,
    overrides: list[str] = OverridesArg,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Weighted kNN on frozen features (k and the temperature chosen on validation).

    \b
    Example:
      $ dinotune knn images -o runs/knn
    """
    from dinotune.verbs.probe import ProbeConfig, run_probe

    base = config_values("knn", data=data, image_size=image_size, backbone=backbone, out=out or new_run_dir("knn"))
    base["sweep"] = {"enabled": False}
    result = run_probe(load_config(ProbeConfig, config, overrides, base=base), overwrite=overwrite)
    typer.echo(f"run folder: {result.run_dir}")


@app.command()
def predict(
    run: Path = typer.Argument(..., metavar="RUN", help="Run, model or export folder (with model.json)."),
    images: list[Path] = typer.Argument(..., metavar="IMAGES...", help="Image files or folders."),
    top_k: int = typer.Option(3, help="Labels to show per image."),
    threshold: float = typer.Option(None, help="Multi-label decision threshold (default: chosen on val, in the card)."),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Also write the predictions to this CSV file (segmentation, detection, depth: the output folder).",
    ),
    tile: int = typer.Option(
        None,
        help="Classifier: label every TILE-pixel tile of each image (large scenes) into --out (default ./tiles): "
        "a CSV per image with pixel boxes and map coordinates. Segmenter: block side (default 2048).",
    ),
    tile_stride: int = typer.Option(None, help="Step between tiles in pixels (default: --tile, no overlap)."),
    embeddings: bool = typer.Option(False, help="With --tile: also write each tile's embedding to the CSV."),
    depth_format: str = typer.Option("png", help="Depth model: png (16-bit, JSON sidecar scale) or tiff (float32 m)."),
) -> None:
    """Classify images with a run, model or export folder (a segmenter writes masks and overlays:
    index PNGs, or GeoTIFFs with the input's CRS and transform for a georeferenced TIFF).

    \b
    Examples:
      $ dinotune predict runs/probe images/test/class_0
      $ dinotune predict runs/probe/export images/test --out predictions.csv
    """
    from dinotune.verbs.predict import run_predict

    result, predictions = run_predict(
        run,
        images,
        out=out,
        top_k=top_k,
        threshold=threshold,
        tile=tile,
        tile_stride=tile_stride,
        embeddings=embeddings,
        depth_format=depth_format,
    )
    for p in predictions:
        others = ", ".join(f"{label} {prob:.3f}" for label, prob in p.top[1:])
        typer.echo(f"{p.path}\t{p.label}\t{p.probability:.3f}" + (f"\t({others})" if others else ""))
    if "masks" in result.metrics:
        overlays = " and overlays" if (result.run_dir / "overlays").is_dir() else ""
        typer.echo(f"wrote {result.metrics['masks']} masks{overlays} to {result.run_dir}")
    elif "depth_maps" in result.metrics:
        typer.echo(f"wrote {result.metrics['depth_maps']} depth maps and previews to {result.run_dir}")
    elif "tiles" in result.metrics:
        typer.echo(f"wrote {result.metrics['tiles']} tiles of {result.metrics['scenes']} image(s) to {result.run_dir}")
    elif out or "detections" in result.metrics:  # a CSV, or a detector's predictions.json and drawings
        typer.echo(f"wrote {result.run_dir}{result.metrics.get('written', '')}")


@app.command()
def quickstart(
    backbone: str = typer.Option(None, "--backbone", "-b", help=QUICKSTART_BACKBONE),
    per_class: int = typer.Option(300, help="Images per class taken from the bundled dataset."),
    image_size: int = typer.Option(112, help="Input side in pixels."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default: runs/quickstart-TIME)."),
) -> None:
    """The whole loop on a bundled real dataset: data check, features, probe, kNN, metrics, predictions.

    \b
    Example:
      $ dinotune quickstart --per-class 20 --image-size 32 -o runs/quickstart
    """
    from dinotune.verbs.quickstart import quickstart as run_quickstart

    run_quickstart(backbone, per_class=per_class, image_size=image_size, out=out)


@app.command()
def pretrain(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML config, e.g. configs/ssl_continuation.yaml."),
    overrides: list[str] = OverridesArg,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in `out` exactly where it stopped."),
) -> None:
    """Self-supervised continued pretraining (DINO + iBOT + KoLeo, optional Gram anchoring) on unlabelled images.

    \b
    Example (settings small enough for a CPU):
      $ dinotune pretrain configs/ssl_continuation.yaml data.root=images out=runs/ssl \\
          data.batch_size=16 crops.global_size=32 crops.local_size=16 crops.n_local=2 \\
          heads.out_dim=256 heads.hidden_dim=64 trainer.max_steps=2
    """
    from dinotune.verbs.pretrain import PretrainConfig, run_pretrain

    run_dir = run_pretrain(load_config(PretrainConfig, config, overrides), resume=resume).run_dir
    typer.echo(f"run folder: {run_dir} (continued backbone: {run_dir}/backbone_hf and {run_dir}/backbone.pth)")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., metavar="RUN", help="Run, model or export folder (with model.json)."),
    data: list[Path] = typer.Argument(
        None, metavar="DATA...", help="Datasets (default: the run's own); several give a domain-shift table."
    ),
    split: str = typer.Option(
        None, help="Split to evaluate when the data has splits (default: the run's own report split, else test)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: RUN/evaluation)."),
    overwrite: bool = OverwriteOpt,
    robustness: bool = typer.Option(False, "--robustness", help="Accuracy under corruptions (5 severities), FGSM/PGD."),
    ood_data: Path = typer.Option(None, help="Folder of out-of-distribution images: OOD AUROC, FPR@95TPR."),
    epsilon: float = typer.Option(0.035, help="Adversarial radius in normalised-pixel units."),
) -> None:
    """Metrics and a self-contained report.html for classifiers and segmenters alike.

    \b
    Examples:
      $ dinotune evaluate runs/probe
      $ dinotune evaluate runs/probe images --split val --out reports/val
    """
    from dinotune.model import read_card
    from dinotune.verbs.evaluate import run_evaluate

    dense = read_card(run).task in ("segment", "depth", "detect")  # their evaluations take no classification options
    options = {} if dense else {"robustness": robustness, "ood_data": ood_data, "epsilon": epsilon}
    result = run_evaluate(run, data or None, split=split, out=out, overwrite=overwrite, **options)
    summary = result.metrics.get("summary", {})
    figures = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if isinstance(v, float))
    typer.echo(f"{figures}\nwrote {result.run_dir / 'report.html'}")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUNS...", help="Run folders to compare (probe, knn, finetune, segment, ...)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Also write comparison.json and comparison.html here."),
) -> None:
    """One table of the main metric, training time, parameters and model size of several runs.

    \b
    Example:
      $ dinotune compare runs/probe runs/knn runs/ft --out comparison
    """
    from dinotune.evaluation.compare import format_table
    from dinotune.verbs.compare import run_compare

    typer.echo(format_table(run_compare(runs, out=out).metrics["rows"]))


@app.command()
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="Run or model folder (with model.json)."),
    out: Path = typer.Option(None, "--out", "-o", help="Export folder (default: RUN/export)."),
    overwrite: bool = OverwriteOpt,
    fmt: str = typer.Option("onnx", "--format", metavar="onnx", help="Export format."),
    quantize: str = typer.Option(None, metavar="int8", help="Also write an ONNX Runtime int8 model and compare it."),
    static: bool = typer.Option(False, "--static", help="Static int8 quantisation with calibration images."),
    opset: int = typer.Option(None, help="ONNX opset (default: the exporter's)."),
    backbone_only: bool = typer.Option(False, "--backbone-only", help="Export the backbone's embeddings alone."),
    calibration_images: Path = typer.Option(
        None, "--calibration-images", "--calibration", help="Folder of images for verification and int8 calibration."
    ),
) -> None:
    """Export to ONNX, verified against PyTorch (max abs difference), optionally int8-quantised.

    \b
    Examples:
      $ dinotune export runs/probe
      $ dinotune export runs/ft --quantize int8 --calibration-images images/val
    """
    from dinotune.verbs.export import run_export

    result = run_export(
        run, out, fmt=fmt, quantize=quantize, static=static, opset=opset, backbone_only=backbone_only,
        calibration_images=calibration_images, overwrite=overwrite,
    )  # fmt: skip
    typer.echo(export_summary(result.run_dir, result.metrics))


@app.command()
def serve(
    model: Path = typer.Argument(
        ..., metavar="MODEL", help="Run/model folder, export folder, or exported .onnx with its model.json."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 inside a container)."),
    port: int = typer.Option(8000, help="Port."),
    workers: int = typer.Option(None, min=1, help="Worker processes sharing the port and the metrics (default 1)."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML with ServeConfig fields."),
    overrides: list[str] = typer.Argument(
        None, metavar="KEY=VALUE...", help="ServeConfig overrides, e.g. max_batch_size=16 threads=2."
    ),
) -> None:
    """HTTP server: /predict, /predict/batch, /health, /ready, /info, /metrics, with micro-batching.

    \b
    Examples (tests/serve/test_launchers.py runs each as written):
      $ dinotune serve runs/probe/export --port 8000 max_batch_size=16 threads=2
      $ dinotune serve runs/probe/export --host 0.0.0.0 --port 8000 --workers 2
      $ DINOTUNE_MODEL=runs/probe/export uvicorn --factory dinotune.serve.app:create_app --port 8000

    Launchers, workers, threads, metrics and the OpenAPI schema: docs/serve.md.
    """
    from dinotune.serve import ServeConfig
    from dinotune.serve import serve as run_serve

    settings = load_config(ServeConfig, config, overrides, base={"workers": workers} if workers else None)
    typer.echo(f"serving {model} on http://{host}:{port} (Ctrl-C stops; --verbose shows every request)", err=True)
    run_serve(model, host=host, port=port, config=settings, log_level="info" if _state["verbose"] else "warning")


@app.command()
def train(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="YAML config whose `task` key names the job (probe, finetune, segment, pretrain)."
    ),
    overrides: list[str] = OverridesArg,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in `out` exactly where it stopped."),
) -> None:
    """Run the job a YAML config describes (probe, finetune, segment or pretrain); --resume continues it.

    \b
    Examples:
      $ dinotune train configs/finetune.yaml data.root=images out=runs/ft data.image_size=32 trainer.max_epochs=2
      $ dinotune train configs/finetune.yaml data.root=images out=runs/ft trainer.max_epochs=3 --resume
    """
    from dinotune.verbs.train import run_train

    result = run_train(config, overrides, resume=resume)
    typer.echo(f"run folder: {result.run_dir}")


app.add_typer(data_app, name="data", help="Check datasets and compute their statistics.")


def main() -> None:
    """Console entry point: user errors are one line and exit code 2; Ctrl-C says what was kept, exit 130."""
    run_app(app, hoist_global_flags(sys.argv[1:]), verbose=lambda: _state["verbose"])


if __name__ == "__main__":
    main()
